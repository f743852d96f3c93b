//! The tools a session can run.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use colloquy::tools::ToolDefinition;
use serde_json::Value;

/// A tool's failure, sent to the model as an error output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ToolError(pub String);

impl ToolError {
    /// An error with a message for the model.
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl From<String> for ToolError {
    fn from(value: String) -> Self {
        Self(value)
    }
}

impl From<&str> for ToolError {
    fn from(value: &str) -> Self {
        Self(value.to_string())
    }
}

/// The future a tool handler returns.
pub type ToolFuture = Pin<Box<dyn Future<Output = Result<String, ToolError>> + Send>>;

type Handler = Arc<dyn Fn(Value) -> ToolFuture + Send + Sync>;

/// One async tool: its definition for the model and its handler.
#[derive(Clone)]
pub struct Tool {
    pub(crate) definition: ToolDefinition,
    pub(crate) handler: Handler,
}

impl std::fmt::Debug for Tool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tool")
            .field("name", &self.definition.name)
            .finish()
    }
}

impl Tool {
    /// A tool from its definition and an async handler taking the parsed arguments.
    pub fn new<F, Fut>(definition: ToolDefinition, handler: F) -> Self
    where
        F: Fn(Value) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<String, ToolError>> + Send + 'static,
    {
        Self {
            definition,
            handler: Arc::new(move |args| Box::pin(handler(args))),
        }
    }

    /// The definition sent to the model.
    pub fn definition(&self) -> &ToolDefinition {
        &self.definition
    }
}

/// The tools of a session, with the per-call timeout.
#[derive(Clone, Debug)]
pub struct ToolRegistry {
    pub(crate) tools: Arc<HashMap<String, Tool>>,
    pub(crate) timeout: Duration,
    pub(crate) max_output_bytes: usize,
}

impl Default for ToolRegistry {
    fn default() -> Self {
        Self {
            tools: Arc::new(HashMap::new()),
            timeout: Duration::from_secs(10),
            max_output_bytes: 64 * 1024,
        }
    }
}

impl ToolRegistry {
    /// An empty registry with a 10 s per-call timeout and 64 KiB outputs.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a tool (replacing one of the same name).
    pub fn with_tool(mut self, tool: Tool) -> Self {
        Arc::make_mut(&mut self.tools).insert(tool.definition.name.clone(), tool);
        self
    }

    /// Caps what one call may send back to the model; longer outputs are cut at
    /// a character boundary and marked as truncated (the context, and every later
    /// request, would otherwise carry them whole).
    pub fn with_max_output_bytes(mut self, max: usize) -> Self {
        self.max_output_bytes = max;
        self
    }

    /// Sets the per-call timeout.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The definitions, for [`LlmOptions::tools`](colloquy::llm::LlmOptions::tools), sorted by name.
    pub fn definitions(&self) -> Vec<ToolDefinition> {
        let mut defs: Vec<ToolDefinition> =
            self.tools.values().map(|t| t.definition.clone()).collect();
        defs.sort_by(|a, b| a.name.cmp(&b.name));
        defs
    }

    /// Looks a tool up.
    pub fn get(&self, name: &str) -> Option<&Tool> {
        self.tools.get(name)
    }
}
