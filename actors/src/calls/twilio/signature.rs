//! Twilio's request signature (`X-Twilio-Signature`): whoever knows the
//! `/twilio` URL could otherwise stream audio into the operator's model and
//! speech accounts. Twilio signs the WebSocket upgrade with the account's
//! auth token: HMAC-SHA1 over the full URL it connected to, followed by the
//! POST parameters sorted by name, each name then value (a WebSocket upgrade
//! is a GET: the URL alone), base64. Compared in constant time.

use axum::http::{HeaderMap, Uri};
use base64::Engine;
use colloquy::Secret;
use hmac::{Hmac, Mac};
use sha1::Sha1;

/// The header Twilio signs its requests with.
pub const SIGNATURE_HEADER: &str = "x-twilio-signature";

/// Who may stream calls into `/twilio`: requests signed with the account's
/// auth token, and (if set) streams whose `start` names the account.
#[derive(Clone)]
pub struct TwilioAuth {
    auth_token: Secret,
    account_sid: Option<String>,
    public_url: Option<String>,
}

impl std::fmt::Debug for TwilioAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwilioAuth")
            .field("auth_token", &self.auth_token)
            .field("account_sid", &self.account_sid)
            .field("public_url", &self.public_url)
            .finish()
    }
}

impl TwilioAuth {
    /// Upgrades must be signed with `auth_token`.
    pub fn new(auth_token: Secret) -> Self {
        Self {
            auth_token,
            account_sid: None,
            public_url: None,
        }
    }

    /// A stream's `start` must name `account_sid` (else the call is closed).
    pub fn with_account_sid(mut self, account_sid: impl Into<String>) -> Self {
        self.account_sid = Some(account_sid.into());
        self
    }

    /// The URL Twilio connects to, up to the routes (`wss://voice.example.com`,
    /// or `wss://example.com/voice` behind a proxy that strips `/voice`): the
    /// signed URL is this followed by the request's path and query. Without
    /// it, `wss://` and the request's `Host`.
    pub fn with_public_url(mut self, public_url: impl Into<String>) -> Self {
        self.public_url = Some(public_url.into().trim_end_matches('/').to_string());
        self
    }

    /// The account a stream must name, if any.
    pub fn account_sid(&self) -> Option<&str> {
        self.account_sid.as_deref()
    }

    /// The full URL Twilio signed for a request to `uri` with `headers`.
    pub fn signed_url(&self, headers: &HeaderMap, uri: &Uri) -> String {
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        match &self.public_url {
            Some(base) => format!("{base}{path}"),
            None => {
                let host = headers
                    .get(axum::http::header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .unwrap_or("");
                format!("wss://{host}{path}")
            }
        }
    }

    /// Whether the upgrade request carries a valid signature.
    pub fn verify_request(&self, headers: &HeaderMap, uri: &Uri) -> bool {
        let Some(signature) = headers.get(SIGNATURE_HEADER).and_then(|h| h.to_str().ok()) else {
            return false;
        };
        verify(
            &self.auth_token,
            &self.signed_url(headers, uri),
            &[],
            signature,
        )
    }
}

fn mac(auth_token: &Secret, url: &str, params: &[(&str, &str)]) -> Hmac<Sha1> {
    let mut sorted: Vec<&(&str, &str)> = params.iter().collect();
    sorted.sort();
    // HMAC takes a key of any length.
    let mut mac = Hmac::<Sha1>::new_from_slice(auth_token.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(url.as_bytes());
    for (name, value) in sorted {
        mac.update(name.as_bytes());
        mac.update(value.as_bytes());
    }
    mac
}

/// Twilio's signature of a request to `url` with POST `params` (none for a
/// WebSocket upgrade): base64 of HMAC-SHA1 keyed by the auth token over the
/// URL and the parameters sorted by name, each name followed by its value.
pub fn sign(auth_token: &Secret, url: &str, params: &[(&str, &str)]) -> String {
    base64::engine::general_purpose::STANDARD
        .encode(mac(auth_token, url, params).finalize().into_bytes())
}

/// Whether `signature` is Twilio's signature of the request, compared in
/// constant time.
pub fn verify(auth_token: &Secret, url: &str, params: &[(&str, &str)], signature: &str) -> bool {
    let Ok(given) = base64::engine::general_purpose::STANDARD.decode(signature.trim()) else {
        return false;
    };
    mac(auth_token, url, params).verify_slice(&given).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Twilio's published example (twilio-php's request validation docs):
    /// auth token `12345`, this URL and these POST parameters.
    #[test]
    fn twilios_published_example_verifies() {
        let token = Secret::new("12345");
        let url = "https://mycompany.com/myapp.php?foo=1&bar=2";
        let params = [
            ("CallSid", "CA1234567890ABCDE"),
            ("Caller", "+14158675309"),
            ("Digits", "1234"),
            ("From", "+14158675309"),
            ("To", "+18005551212"),
        ];
        let published = "RSOYDt4T1cUTdK1PDd93/VVr8B8=";
        assert_eq!(sign(&token, url, &params), published);
        assert!(verify(&token, url, &params, published));
        // Order of the parameters as given does not matter: they are sorted.
        let mut reversed = params;
        reversed.reverse();
        assert!(verify(&token, url, &reversed, published));
        // Anything changed fails.
        assert!(!verify(&Secret::new("12346"), url, &params, published));
        assert!(!verify(
            &token,
            "https://mycompany.com/myapp.php?foo=1&bar=3",
            &params,
            published
        ));
        assert!(!verify(&token, url, &params[1..], published));
        assert!(!verify(&token, url, &params, "RSOYDt4T1cUTdK1PDd93/VVr8B8"));
        assert!(!verify(&token, url, &params, "not base64!"));
    }

    #[test]
    fn an_upgrade_is_signed_over_the_public_url_alone() {
        let auth =
            TwilioAuth::new(Secret::new("s3cr3t")).with_public_url("wss://voice.example.com/");
        let uri: Uri = "/twilio?x=1".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "127.0.0.1:9".parse().unwrap());
        assert_eq!(
            auth.signed_url(&headers, &uri),
            "wss://voice.example.com/twilio?x=1"
        );
        assert!(!auth.verify_request(&headers, &uri), "no signature");
        let good = sign(
            &Secret::new("s3cr3t"),
            "wss://voice.example.com/twilio?x=1",
            &[],
        );
        headers.insert(SIGNATURE_HEADER, good.parse().unwrap());
        assert!(auth.verify_request(&headers, &uri));
        let without = TwilioAuth::new(Secret::new("s3cr3t"));
        assert_eq!(
            without.signed_url(&headers, &uri),
            "wss://127.0.0.1:9/twilio?x=1"
        );
        assert!(!without.verify_request(&headers, &uri));
        assert!(!format!("{auth:?}").contains("s3cr3t"), "{auth:?}");
    }
}
