//! The browser page, served at `/`: one static HTML file with its
//! AudioWorklets inline (no build step, no external script), and the call
//! token its WebSocket presents (see [`BrowserAccess`](crate::calls::BrowserAccess)).

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};

use crate::calls::CallServices;

/// The page's HTML, with [`TOKEN_SLOT`] where the call token goes.
pub const PAGE: &str = include_str!("page.html");

/// The placeholder in [`PAGE`] replaced by the call's token.
pub const TOKEN_SLOT: &str = "{{COLLOQUY_CALL_TOKEN}}";

/// `GET /`: the page, with a fresh call token (never cached: each load is a
/// new call).
pub async fn page(State(services): State<CallServices>) -> Response {
    let token = services.browser.issue(services.next_id());
    (
        [(header::CACHE_CONTROL, "no-store")],
        Html(PAGE.replace(TOKEN_SLOT, &token)),
    )
        .into_response()
}
