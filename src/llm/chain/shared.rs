//! A built chain as its streams share it, and one request as a chain keeps
//! it (the bodies each provider's request is derived from).

use std::sync::{Arc, Mutex};

use serde_json::Value;

use super::breaker::Breaker;
use super::continuation;
use super::hedge::{Hedging, LatencyWindow};
use crate::llm::error::LlmError;
use crate::llm::structured::StructuredOutput;
use crate::llm::transport::ClientInner;

/// One provider of a built chain.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) client: Arc<ClientInner>,
    pub(crate) model: Option<String>,
    pub(crate) breaker: Option<Arc<Breaker>>,
    pub(crate) window: Mutex<LatencyWindow>,
}

/// What the streams of a chain client share.
#[derive(Debug)]
pub(crate) struct ChainShared {
    pub(crate) providers: Vec<Entry>,
    pub(crate) hedging: Hedging,
    pub(crate) instruction: Arc<str>,
}

/// A request as a chain keeps it: bodies to derive each attempt's from.
pub(crate) struct ChainRequest {
    pub(super) base: Arc<Value>,
    pub(super) own_bodies: Vec<Option<Arc<Value>>>,
    pub(crate) extra_headers: Vec<(String, String)>,
    pub(crate) extra_query: Vec<(String, String)>,
    pub(crate) structured: Option<StructuredOutput>,
}

impl std::fmt::Debug for ChainRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use crate::llm::options::HiddenValues;
        f.debug_struct("ChainRequest")
            .field("extra_headers", &HiddenValues(&self.extra_headers))
            .field("extra_query", &HiddenValues(&self.extra_query))
            .field("structured", &self.structured)
            .finish_non_exhaustive()
    }
}

impl ChainRequest {
    /// The body for provider `index` (its model), continuing `prefix` if set.
    pub(crate) fn body(
        &self,
        index: usize,
        model: Option<&str>,
        prefix: Option<&str>,
        instruction: &str,
    ) -> Result<bytes::Bytes, LlmError> {
        let source = self
            .own_bodies
            .get(index)
            .and_then(Option::as_ref)
            .unwrap_or(&self.base);
        let bytes = if model.is_none() && prefix.is_none() {
            serde_json::to_vec(&**source)
        } else {
            let mut body = match prefix {
                Some(prefix) => continuation::continuation_body(source, prefix, instruction),
                None => (**source).clone(),
            };
            if let (Some(model), Some(obj)) = (model, body.as_object_mut()) {
                obj.insert("model".into(), Value::String(model.to_string()));
            }
            serde_json::to_vec(&body)
        };
        bytes
            .map(bytes::Bytes::from)
            .map_err(|e| LlmError::UnexpectedBody(e.to_string()))
    }
}
