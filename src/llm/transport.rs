//! The HTTP side of one provider: connection pool, URL, credentials and
//! headers ([`ClientInner`]), and one exchange ([`Connector::send`]): deadlines
//! up to the response headers, status handling, error and JSON bodies.
//!
//! It knows nothing of chunks or events: an event-stream body is handed on as
//! bytes ([`Connected::Sse`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{StreamExt, TryStreamExt};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};

use super::config::{AzureAuth, ClientConfig, Provider, RetryPolicy};
use super::error::{ConfigError, LlmError, ProviderError, parse_provider_error};
use super::read_gap::{ReadGap, deadline_after};
use super::sse::ByteSource;
use crate::secret::{Secret, display_url, scrub};

/// One provider's endpoint, credentials and transport policy.
pub(crate) struct ClientInner {
    http: reqwest::Client,
    pub(crate) url: reqwest::Url,
    headers: HeaderMap,
    pub(crate) config: ClientConfig,
    pub(crate) provider_name: &'static str,
    /// Short name for metrics and logs (default: the URL's host and port).
    pub(crate) label: Arc<str>,
    /// The configured base URL (no user info, no query: [`display_url`]).
    pub(crate) base_url: Arc<str>,
    /// The credentials sent, scrubbed from whatever the provider says.
    keys: Vec<Secret>,
}

impl std::fmt::Debug for ClientInner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("label", &self.label)
            .field("provider", &self.provider_name)
            .field("url", &display_url(self.url.as_str()))
            .finish_non_exhaustive()
    }
}

fn sensitive(value: &str) -> Result<HeaderValue, ConfigError> {
    let mut v = HeaderValue::from_str(value)
        .map_err(|_| ConfigError::InvalidHeader("<credential>".into()))?;
    v.set_sensitive(true);
    Ok(v)
}

fn plain_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), ConfigError> {
    let n = HeaderName::from_bytes(name.as_bytes())
        .map_err(|_| ConfigError::InvalidHeader(scrub(name, &[])))?;
    let v = HeaderValue::from_str(value).map_err(|_| ConfigError::InvalidHeader(n.to_string()))?;
    Ok((n, v))
}

/// An `extra_headers` entry: where gateway keys go, so its value is marked
/// sensitive (hidden from `Debug`, never indexed by HTTP/2's HPACK).
fn extra_header(name: &str, value: &str) -> Result<(HeaderName, HeaderValue), ConfigError> {
    let (n, mut v) = plain_header(name, value)?;
    v.set_sensitive(true);
    Ok((n, v))
}

/// A connection pool with the config's connect timeout and pool size.
pub(crate) fn http_client(config: &ClientConfig) -> Result<reqwest::Client, LlmError> {
    reqwest::Client::builder()
        .connect_timeout(config.connect_timeout)
        .pool_max_idle_per_host(config.pool_max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(120))
        .tcp_nodelay(true)
        .build()
        .map_err(|e| ConfigError::HttpClient(e.without_url().to_string()).into())
}

/// `host` or `host:port` of a URL, for labels.
fn host_label(url: &reqwest::Url) -> String {
    let host = url.host_str().unwrap_or("provider");
    match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    }
}

impl ClientInner {
    /// Headers, URL and credentials of one provider.
    pub(crate) fn build(
        provider: Provider,
        config: ClientConfig,
        http: reqwest::Client,
        label: Option<String>,
    ) -> Result<Arc<Self>, LlmError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/event-stream"),
        );
        let mut keys = Vec::new();
        let (url, org, project, provider_name) = match &provider {
            Provider::OpenAi(c) => {
                if let Some(key) = &c.api_key {
                    keys.push(key.clone());
                    headers.insert(
                        header::AUTHORIZATION,
                        sensitive(&format!("Bearer {}", key.expose()))?,
                    );
                }
                let url = format!("{}/chat/completions", c.base_url.trim_end_matches('/'));
                (url, c.organization.clone(), c.project.clone(), "openai")
            }
            Provider::Azure(c) => {
                match &c.auth {
                    AzureAuth::ApiKey(key) => {
                        keys.push(key.clone());
                        headers
                            .insert(HeaderName::from_static("api-key"), sensitive(key.expose())?);
                    }
                    AzureAuth::AdToken(token) => {
                        keys.push(token.clone());
                        headers.insert(
                            header::AUTHORIZATION,
                            sensitive(&format!("Bearer {}", token.expose()))?,
                        );
                    }
                }
                (
                    c.chat_url(),
                    c.organization.clone(),
                    c.project.clone(),
                    "azure",
                )
            }
        };
        if let Some(org) = org {
            let (n, v) = plain_header("openai-organization", &org)?;
            headers.insert(n, v);
        }
        if let Some(project) = project {
            let (n, v) = plain_header("openai-project", &project)?;
            headers.insert(n, v);
        }
        let mut url =
            reqwest::Url::parse(&url).map_err(|_| ConfigError::InvalidUrl(display_url(&url)))?;
        if let Provider::Azure(c) = &provider {
            url.query_pairs_mut()
                .append_pair("api-version", &c.api_version);
        }
        let base_url = display_url(match &provider {
            Provider::OpenAi(c) => &c.base_url,
            Provider::Azure(c) => c.base_url.as_deref().unwrap_or(&c.endpoint),
        });
        let label = label.unwrap_or_else(|| host_label(&url));
        Ok(Arc::new(ClientInner {
            http,
            url,
            headers,
            config,
            provider_name,
            label: Arc::from(label),
            base_url: Arc::from(base_url),
            keys,
        }))
    }

    /// The URL and headers of one request, with the options' extras.
    pub(crate) fn prepare(
        &self,
        extra_headers: &[(String, String)],
        extra_query: &[(String, String)],
        body: Bytes,
        model: &str,
    ) -> Result<Prepared, LlmError> {
        let mut headers = self.headers.clone();
        let mut keys = self.keys.clone();
        // Extra values short enough to be ordinary words (`true`, `json`)
        // are not scrubbed from messages; a credential is longer.
        let credential_like = |v: &&String| v.len() >= 8;
        for (name, value) in extra_headers {
            let (n, v) = extra_header(name, value)?;
            headers.insert(n, v);
        }
        keys.extend(
            extra_headers
                .iter()
                .chain(extra_query)
                .map(|(_, v)| v)
                .filter(credential_like)
                .map(|v| Secret::new(v.as_str())),
        );
        let mut url = self.url.clone();
        if !extra_query.is_empty() {
            let mut q = url.query_pairs_mut();
            for (k, v) in extra_query {
                q.append_pair(k, v);
            }
        }
        Ok(Prepared {
            url,
            headers,
            body,
            model: Arc::from(model),
            keys,
        })
    }
}

/// One request, ready to send.
pub(crate) struct Prepared {
    url: reqwest::Url,
    headers: HeaderMap,
    body: Bytes,
    /// The model it asks for (metrics' `gen_ai.request.model`).
    model: Arc<str>,
    /// The provider's credentials and the request's extra header and query
    /// values: scrubbed from every error ([`Connector::scrub`]).
    keys: Vec<Secret>,
}

/// What a successful HTTP exchange produced.
pub(crate) enum Connected {
    /// An event stream.
    Sse {
        body: ByteSource,
        request_id: Option<String>,
    },
    /// A single JSON completion.
    Completion {
        body: String,
        request_id: Option<String>,
    },
}

/// Sends one prepared request; shared by the attempts of a stream.
#[derive(Clone)]
pub(crate) struct Connector {
    client: Arc<ClientInner>,
    request: Arc<Prepared>,
    retry: RetryPolicy,
}

fn connection_error(e: reqwest::Error) -> LlmError {
    // reqwest's own message is generic ("error sending request"); the cause
    // (refused, reset, DNS, TLS) is in the source chain. URLs are left out.
    let e = e.without_url();
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    LlmError::Connection(message)
}

fn header_str<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    if let Some(ms) =
        header_str(headers, "retry-after-ms").and_then(|v| v.trim().parse::<f64>().ok())
    {
        return Some(Duration::from_secs_f64(ms.max(0.0) / 1000.0));
    }
    header_str(headers, "retry-after")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite())
        .map(|s| Duration::from_secs_f64(s.clamp(0.0, 3600.0)))
}

/// Reads a whole non-streamed body into `buf`: each chunk within the read gap
/// (the body is a [`ReadGap`]), all of it within `total`, at most `limit` bytes.
/// On failure `buf` keeps what arrived.
async fn read_bounded(
    body: &mut ByteSource,
    buf: &mut Vec<u8>,
    limit: usize,
    total: Duration,
) -> Result<(), LlmError> {
    let read = async {
        while let Some(chunk) = body.next().await {
            let chunk = chunk?;
            if buf.len() + chunk.len() > limit {
                return Err(LlmError::UnexpectedBody(format!(
                    "body exceeds {limit} bytes"
                )));
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(())
    };
    tokio::time::timeout_at(deadline_after(total), read)
        .await
        .map_err(|_| LlmError::BodyTimeout(total))?
}

/// The typed error of a non-success response with (part of) its body.
fn http_error(
    status: reqwest::StatusCode,
    body: &[u8],
    retry_after: Option<Duration>,
    request_id: Option<String>,
) -> LlmError {
    let text = String::from_utf8_lossy(body);
    let error = serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| parse_provider_error(&v))
        .unwrap_or_else(|| ProviderError {
            message: if text.trim().is_empty() {
                status.canonical_reason().unwrap_or("error").to_string()
            } else {
                text.chars().take(500).collect()
            },
            ..Default::default()
        });
    LlmError::Http {
        status: status.as_u16(),
        error: Box::new(error),
        retry_after,
        request_id,
    }
}

impl Connector {
    pub(crate) fn new(client: Arc<ClientInner>, request: Prepared, retry: RetryPolicy) -> Self {
        Self {
            client,
            request: Arc::new(request),
            retry,
        }
    }

    /// The error with the request's credentials, and anything shaped like
    /// one, hidden: applied to every error of an attempt before it is
    /// logged, retried on or returned.
    pub(crate) fn scrub(&self, error: LlmError) -> LlmError {
        let known: Vec<&str> = self.request.keys.iter().map(Secret::expose).collect();
        error.scrubbed(&known)
    }

    pub(crate) fn read_gap(&self) -> Duration {
        self.client.config.read_gap_timeout
    }

    pub(crate) fn first_token_timeout(&self) -> Option<Duration> {
        self.client.config.first_token_timeout
    }

    pub(crate) fn output_gap_timeout(&self) -> Option<Duration> {
        self.client.config.output_gap_timeout
    }

    pub(crate) fn retry_policy(&self) -> RetryPolicy {
        self.retry
    }

    pub(crate) fn label(&self) -> &str {
        &self.client.label
    }

    /// The model the request asks for.
    pub(crate) fn model(&self) -> &str {
        &self.request.model
    }

    /// `openai` or `azure`.
    pub(crate) fn provider_name(&self) -> &'static str {
        self.client.provider_name
    }

    pub(crate) async fn send(&self) -> Result<Connected, LlmError> {
        let req = &self.request;
        let config = &self.client.config;
        let send = self
            .client
            .http
            .post(req.url.clone())
            .headers(req.headers.clone())
            .body(req.body.clone())
            .send();
        let resp = tokio::time::timeout_at(deadline_after(config.response_timeout), send)
            .await
            .map_err(|_| LlmError::ResponseTimeout(config.response_timeout))?
            .map_err(connection_error)?;
        let status = resp.status();
        let headers = resp.headers();
        let request_id = ["x-request-id", "apim-request-id", "x-groq-id"]
            .iter()
            .find_map(|h| header_str(headers, h))
            .map(str::to_string);
        let limit = config.limits.max_body_bytes;
        let is_json = header_str(headers, "content-type")
            .is_some_and(|ct| ct.trim_start().starts_with("application/json"));
        let retry_after = retry_after(headers);
        let raw = resp.bytes_stream().map_err(connection_error);
        if status.is_success() && !is_json {
            return Ok(Connected::Sse {
                body: Box::pin(raw),
                request_id,
            });
        }
        let mut body: ByteSource = Box::pin(ReadGap::new(raw, config.read_gap_timeout));
        let mut buf = Vec::new();
        let read = read_bounded(&mut body, &mut buf, limit, config.body_timeout).await;
        if status.is_success() {
            read?;
            let body = String::from_utf8_lossy(&buf).into_owned();
            return Ok(Connected::Completion { body, request_id });
        }
        // The status decides; a body that failed or stalled is kept as far as it came.
        Err(http_error(status, &buf, retry_after, request_id))
    }
}
