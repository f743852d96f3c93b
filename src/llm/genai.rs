//! The OpenTelemetry GenAI semantic conventions' client metrics, beside the
//! `colloquy_*` ones, so a generic backend understands what it scrapes.
//!
//! By default the names of the conventions' v1.36 line, which instrumentations
//! keep emitting unless asked otherwise: `gen_ai.client.operation.duration`,
//! `gen_ai.client.operation.time_to_first_chunk` (seconds) and
//! `gen_ai.client.token.usage` (tokens, by `gen_ai.token.type` `input` /
//! `output`). With `OTEL_SEMCONV_STABILITY_OPT_IN` holding
//! `gen_ai_latest_experimental` (read once, at the first request), the newer
//! client-inference names instead: `gen_ai.client.inference.duration`,
//! `gen_ai.client.inference.time_to_first_chunk`,
//! `gen_ai.client.inference.usage.input_tokens` and `….output_tokens`.
//! Every one carries `gen_ai.operation.name` (`chat`),
//! `gen_ai.provider.name` (`openai`, `azure.ai.openai`) and
//! `gen_ai.request.model`; a failed request's duration adds `error.type`.
//! Recorded per HTTP attempt, never per token.

use std::sync::OnceLock;

use super::usage::Usage;

/// Which names to emit.
#[derive(Clone, Copy)]
struct Names {
    duration: &'static str,
    first_chunk: &'static str,
    latest: bool,
}

fn names() -> Names {
    static NAMES: OnceLock<Names> = OnceLock::new();
    *NAMES.get_or_init(|| {
        let latest = std::env::var("OTEL_SEMCONV_STABILITY_OPT_IN").is_ok_and(|v| {
            v.split(',')
                .any(|s| s.trim() == "gen_ai_latest_experimental")
        });
        if latest {
            Names {
                duration: "gen_ai.client.inference.duration",
                first_chunk: "gen_ai.client.inference.time_to_first_chunk",
                latest,
            }
        } else {
            Names {
                duration: "gen_ai.client.operation.duration",
                first_chunk: "gen_ai.client.operation.time_to_first_chunk",
                latest,
            }
        }
    })
}

/// Whether `OTEL_SEMCONV_STABILITY_OPT_IN` asks for the latest experimental
/// GenAI conventions (`gen_ai_latest_experimental`): read once, then the same
/// answer for the process's metrics and traces.
pub fn latest_genai_conventions() -> bool {
    names().latest
}

/// The conventions' provider name for this transport's.
fn provider(name: &'static str) -> &'static str {
    match name {
        "azure" => "azure.ai.openai",
        _ => "openai",
    }
}

fn labels(provider_name: &'static str, model: &str) -> [(&'static str, String); 3] {
    [
        ("gen_ai.operation.name", "chat".to_string()),
        ("gen_ai.provider.name", provider(provider_name).to_string()),
        ("gen_ai.request.model", model.to_string()),
    ]
}

/// The first chunk of output, `secs` after the request was sent.
pub(crate) fn first_chunk(provider_name: &'static str, model: &str, secs: f64) {
    metrics::histogram!(names().first_chunk, &labels(provider_name, model)).record(secs);
}

/// The request ended after `secs`: successfully, or with `error` (its kind).
pub(crate) fn finished(
    provider_name: &'static str,
    model: &str,
    secs: f64,
    error: Option<&'static str>,
) {
    let base = labels(provider_name, model);
    match error {
        None => metrics::histogram!(names().duration, &base).record(secs),
        Some(kind) => {
            let [a, b, c] = base;
            let with_error = [a, b, c, ("error.type", kind.to_string())];
            metrics::histogram!(names().duration, &with_error).record(secs);
        }
    }
}

/// The request's usage, as the provider reported it (estimates are not).
pub(crate) fn usage(provider_name: &'static str, model: &str, u: &Usage) {
    if u.estimated {
        return;
    }
    let base = labels(provider_name, model);
    if names().latest {
        metrics::histogram!("gen_ai.client.inference.usage.input_tokens", &base)
            .record(u.prompt_tokens as f64);
        metrics::histogram!("gen_ai.client.inference.usage.output_tokens", &base)
            .record(u.completion_tokens as f64);
    } else {
        for (kind, n) in [("input", u.prompt_tokens), ("output", u.completion_tokens)] {
            let [a, b, c] = base.clone();
            let l = [a, b, c, ("gen_ai.token.type", kind.to_string())];
            metrics::histogram!("gen_ai.client.token.usage", &l).record(n as f64);
        }
    }
}
