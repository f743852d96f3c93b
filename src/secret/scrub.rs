//! One scrubber for everything a provider says and every URL colloquy shows.
//!
//! Providers echo what they were sent: a compatible server answering
//! `Invalid API key: Bearer sk-…` would put the key in an error's `Display`,
//! a bus event, the cluster wire and the log. Every provider message (HTTP
//! error bodies, in-band `error` events, speech providers' refusals and close
//! reasons) passes through [`scrub`] before it is kept: the configured key
//! values are replaced by `***`, and so is anything shaped like a credential
//! (a `Bearer`/`Basic` token, an `sk-…` key, the value of a `key=`,
//! `api-key:`, `token=`, `password=`… pair, the user info of a URL), so a key
//! colloquy was never told about (a gateway's, another tenant's) is hidden
//! too. [`display_url`] is the form of a base URL shown in `Debug`, errors
//! and events: no user info, no query, no fragment.

/// What replaces a hidden value.
const MASK: &str = "***";

/// Names whose value is a credential, matched at the end of a word
/// (`api_key`, `x-api-key`, `access_token`, `client_secret`…).
const SECRET_SUFFIXES: &[&str] = &[
    "key",
    "token",
    "secret",
    "password",
    "passwd",
    "signature",
    "sig",
    "credential",
    "credentials",
    "authorization",
    "auth",
];

fn is_word(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_' || c == '-'
}

/// The end (exclusive) of a credential value starting at `start`.
fn value_end(text: &str, start: usize) -> usize {
    text[start..]
        .char_indices()
        .find(|(_, c)| {
            c.is_whitespace() || matches!(c, '"' | '\'' | '&' | ',' | ';' | '}' | ')' | ']' | '<')
        })
        .map_or(text.len(), |(i, _)| start + i)
}

/// `text` with every configured key (`known`, values of 4 bytes or more) and
/// everything shaped like a credential replaced by `***`.
///
/// ```
/// use colloquy::secret::scrub;
/// let said = "Invalid API key: Bearer sk-live-0123456789 (see https://u:p@x.test/?key=abc)";
/// let shown = scrub(said, &["sk-live-0123456789"]);
/// assert!(!shown.contains("0123456789") && !shown.contains("u:p") && !shown.contains("abc"));
/// ```
pub fn scrub(text: &str, known: &[&str]) -> String {
    let mut text = text.to_string();
    for key in known.iter().filter(|k| k.len() >= 4) {
        if text.contains(key) {
            text = text.replace(key, MASK);
        }
    }
    scrub_patterns(&text)
}

fn scrub_patterns(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    let mut prev: Option<char> = None;
    while i < text.len() {
        let rest = &text[i..];
        let at_word_start = !prev.is_some_and(is_word);
        // `scheme://user:pass@host`: the user info goes.
        if let Some(after) = rest.strip_prefix("://") {
            let authority = after
                .find(|c: char| matches!(c, '/' | '?' | '#') || c.is_whitespace())
                .unwrap_or(after.len());
            if let Some(at) = after[..authority].rfind('@') {
                out.push_str("://");
                out.push_str(MASK);
                out.push('@');
                i += 3 + at + 1;
                prev = Some('@');
                continue;
            }
        }
        if at_word_start {
            let word_len = rest.find(|c: char| !is_word(c)).unwrap_or(rest.len());
            let word = &rest[..word_len];
            let lower = word.to_ascii_lowercase();
            // `Bearer <token>`, `Basic <token>`.
            if (lower == "bearer" || lower == "basic") && word_len < rest.len() {
                let spaces = rest[word_len..]
                    .find(|c: char| c != ' ')
                    .unwrap_or(rest.len() - word_len);
                let start = i + word_len + spaces;
                let end = value_end(text, start);
                if spaces > 0 && end > start {
                    out.push_str(word);
                    out.push(' ');
                    out.push_str(MASK);
                    i = end;
                    prev = Some('*');
                    continue;
                }
            }
            // `sk-…` keys (OpenAI, Anthropic, DeepSeek…).
            if lower.starts_with("sk-") && word_len >= 10 {
                out.push_str(MASK);
                i += word_len;
                prev = Some('*');
                continue;
            }
            // `name=value`, `name: value`, `"name": "value"`.
            let value_start = (word_len > 0 && SECRET_SUFFIXES.iter().any(|s| lower.ends_with(s)))
                .then(|| pair_value(text, i + word_len))
                .flatten();
            if let Some(value_start) = value_start {
                let end = value_end(text, value_start);
                let value = text[value_start..end].to_ascii_lowercase();
                if end > value_start {
                    out.push_str(&text[i..value_start]);
                    i = end;
                    prev = Some('*');
                    // `Authorization: Bearer <token>`, Deepgram's `Token <key>`:
                    // the scheme stays, the credential after it goes.
                    let spaces = text[end..].find(|c: char| c != ' ').unwrap_or(0);
                    let after = value_end(text, end + spaces);
                    if matches!(value.as_str(), "bearer" | "basic" | "token")
                        && spaces > 0
                        && after > end + spaces
                    {
                        out.push_str(&text[value_start..end]);
                        out.push(' ');
                        i = after;
                    }
                    out.push_str(MASK);
                    continue;
                }
            }
            if word_len > 0 {
                out.push_str(word);
                i += word_len;
                prev = word.chars().last();
                continue;
            }
        }
        let c = rest.chars().next().unwrap_or(' ');
        out.push(c);
        i += c.len_utf8();
        prev = Some(c);
    }
    out
}

/// Where the value of a `name=value` / `name: value` pair starts, the name
/// ending at `from`: an optional closing quote, spaces, `=` or `:`, spaces,
/// an optional opening quote.
fn pair_value(text: &str, from: usize) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut j = from;
    if matches!(bytes.get(j), Some(b'"' | b'\'')) {
        j += 1;
    }
    while bytes.get(j) == Some(&b' ') {
        j += 1;
    }
    if !matches!(bytes.get(j), Some(b'=' | b':')) {
        return None;
    }
    j += 1;
    while bytes.get(j) == Some(&b' ') {
        j += 1;
    }
    if matches!(bytes.get(j), Some(b'"' | b'\'')) {
        j += 1;
    }
    Some(j)
}

/// A URL as colloquy shows it (in `Debug`, errors, provider events): no user
/// info, no query and no fragment, whether or not it parses.
///
/// ```
/// use colloquy::secret::display_url;
/// assert_eq!(display_url("https://me:pw@gw.test/v1?key=abc#x"), "https://gw.test/v1");
/// ```
pub fn display_url(url: &str) -> String {
    let cut = url.find(['?', '#']).unwrap_or(url.len());
    let url = &url[..cut];
    let Some(scheme_end) = url.find("://") else {
        // Not a URL with an authority: keep what follows a user info, if any.
        return match url.rfind('@') {
            Some(at) => url[at + 1..].to_string(),
            None => url.to_string(),
        };
    };
    let after = &url[scheme_end + 3..];
    let authority = after.find('/').unwrap_or(after.len());
    match after[..authority].rfind('@') {
        Some(at) => format!("{}{}", &url[..scheme_end + 3], &after[at + 1..]),
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_keys_and_patterns_are_hidden() {
        let cases = [
            ("Invalid API key: Bearer sk-abcdef012345", "sk-abcdef012345"),
            (
                "Authorization: Bearer tok_0123456789abc",
                "tok_0123456789abc",
            ),
            ("authorization: Basic dXNlcjpwYXNz", "dXNlcjpwYXNz"),
            ("Invalid credentials: Token dg-key-123", "dg-key-123"),
            ("bad ?key=AIzaSyExample&x=1", "AIzaSyExample"),
            ("{\"api_key\": \"gw-secret-1\"}", "gw-secret-1"),
            ("api-key: azure-key-77", "azure-key-77"),
            ("x-api-key=other-tenant", "other-tenant"),
            ("access_token=ya29.zzz", "ya29.zzz"),
            ("proxy https://user:hunter2@gw.test/v1", "hunter2"),
            ("key sk-proj-ABCDEFGHIJ seen", "sk-proj-ABCDEFGHIJ"),
        ];
        for (text, secret) in cases {
            let shown = scrub(text, &[]);
            assert!(!shown.contains(secret), "{text:?} -> {shown:?}");
            assert!(shown.contains(MASK), "{text:?} -> {shown:?}");
        }
        assert_eq!(
            scrub(
                "you sent my-own-key-1 twice: my-own-key-1",
                &["my-own-key-1"]
            ),
            "you sent *** twice: ***"
        );
    }

    #[test]
    fn ordinary_text_is_kept() {
        for text in [
            "Rate limit reached for gpt-4o-mini in organization org-1 on tokens per min",
            "{\"error\":{\"code\":\"invalid_api_key\",\"type\":\"invalid_request_error\"}}",
            "The model `gpt-5` does not exist — ñ 文字",
            "skip the sk- prefix check",
            "token limit exceeded: max tokens is 4096",
            "",
        ] {
            assert_eq!(scrub(text, &["abc"]), text);
        }
    }

    #[test]
    fn urls_lose_user_info_query_and_fragment() {
        assert_eq!(
            display_url("http://127.0.0.1:9/v1"),
            "http://127.0.0.1:9/v1"
        );
        assert_eq!(display_url("https://a:b@h.test"), "https://h.test");
        assert_eq!(
            display_url("https://h.test/v1?api-version=1"),
            "https://h.test/v1"
        );
        assert_eq!(display_url("not a url?key=1"), "not a url");
        assert_eq!(display_url("user:pw@host/x"), "host/x");
        assert_eq!(display_url("https://h.test/a@b"), "https://h.test/a@b");
    }
}
