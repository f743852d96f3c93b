//! The GenAI semantic conventions' names, in one place: what changes with
//! `gen_ai_latest_experimental` changes here only.

use opentelemetry::KeyValue;

/// `gen_ai.operation.name` values and span names.
pub(super) const CHAT: &str = "chat";
pub(super) const INVOKE_AGENT: &str = "invoke_agent";
pub(super) const EXECUTE_TOOL: &str = "execute_tool";
pub(super) const SPEECH_TO_TEXT: &str = "speech_to_text";
pub(super) const TEXT_TO_SPEECH: &str = "text_to_speech";
pub(super) const SESSION: &str = "session";

pub(super) const OPERATION: &str = "gen_ai.operation.name";
pub(super) const CONVERSATION: &str = "gen_ai.conversation.id";
pub(super) const AGENT_NAME: &str = "gen_ai.agent.name";
pub(super) const END_REASON: &str = "gen_ai.agent.invocation.end_reason";
pub(super) const REQUEST_MODEL: &str = "gen_ai.request.model";
pub(super) const RESPONSE_ID: &str = "gen_ai.response.id";
pub(super) const RESPONSE_MODEL: &str = "gen_ai.response.model";
pub(super) const FINISH_REASONS: &str = "gen_ai.response.finish_reasons";
pub(super) const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
pub(super) const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
pub(super) const TOOL_NAME: &str = "gen_ai.tool.name";
pub(super) const TOOL_CALL_ID: &str = "gen_ai.tool.call.id";
pub(super) const TOOL_TYPE: &str = "gen_ai.tool.type";
pub(super) const ERROR_TYPE: &str = "error.type";
pub(super) const SERVER_ADDRESS: &str = "server.address";
pub(super) const SERVER_PORT: &str = "server.port";

/// The provider attributes. v1.36 named the provider `gen_ai.system`
/// (Azure: `az.ai.openai`); the newer line `gen_ai.provider.name` (Azure:
/// `azure.ai.openai`, as the metrics say). By default both, each with its
/// own line's value; with only the newer names asked for, the newer one.
pub(super) fn provider(system: &str, latest: bool, out: &mut Vec<KeyValue>) {
    let (old, new) = match system {
        "azure" => ("az.ai.openai", "azure.ai.openai"),
        _ => ("openai", "openai"),
    };
    out.push(KeyValue::new("gen_ai.provider.name", new));
    if !latest {
        out.push(KeyValue::new("gen_ai.system", old));
    }
}

/// `server.address` and `server.port` of a base URL (no credentials,
/// path or query: only the host and port are read).
pub(super) fn server(base_url: &str, out: &mut Vec<KeyValue>) {
    let rest = base_url
        .split_once("://")
        .map_or(base_url, |(_, rest)| rest);
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    let host_port = authority.rsplit('@').next().unwrap_or_default();
    let (host, port) = match host_port.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || host_port.starts_with('[') => {
            (h, p.parse::<i64>().ok())
        }
        _ => (host_port, None),
    };
    if !host.is_empty() {
        out.push(KeyValue::new(SERVER_ADDRESS, host.to_string()));
    }
    let port = port.or_else(|| {
        if base_url.starts_with("https://") {
            Some(443)
        } else if base_url.starts_with("http://") {
            Some(80)
        } else {
            None
        }
    });
    if let Some(p) = port {
        out.push(KeyValue::new(SERVER_PORT, p));
    }
}

/// `error.type` of a failed turn's text (`kind: message`): the kind only,
/// never the message (which may quote a provider).
pub(super) fn error_kind(failed: &str) -> String {
    match failed.split_once(':') {
        Some((kind, _)) if !kind.trim().is_empty() && !kind.trim().contains(' ') => {
            kind.trim().to_string()
        }
        _ => "error".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attrs(f: impl FnOnce(&mut Vec<KeyValue>)) -> Vec<(String, String)> {
        let mut v = Vec::new();
        f(&mut v);
        v.into_iter()
            .map(|kv| (kv.key.to_string(), kv.value.to_string()))
            .collect()
    }

    #[test]
    fn server_address_and_port_without_credentials() {
        assert_eq!(
            attrs(|o| server("https://user:pw@api.openai.com/v1?key=x", o)),
            vec![
                ("server.address".into(), "api.openai.com".into()),
                ("server.port".into(), "443".into())
            ]
        );
        assert_eq!(
            attrs(|o| server("http://127.0.0.1:4011/v1", o)),
            vec![
                ("server.address".into(), "127.0.0.1".into()),
                ("server.port".into(), "4011".into())
            ]
        );
    }

    #[test]
    fn provider_names_follow_the_opt_in() {
        assert_eq!(
            attrs(|o| provider("azure", false, o)),
            vec![
                ("gen_ai.provider.name".into(), "azure.ai.openai".into()),
                ("gen_ai.system".into(), "az.ai.openai".into())
            ]
        );
        assert_eq!(
            attrs(|o| provider("openai", true, o)),
            vec![("gen_ai.provider.name".into(), "openai".into())]
        );
        assert_eq!(error_kind("http: 401 Unauthorized"), "http");
        assert_eq!(error_kind("llm actor failed"), "error");
    }
}
