//! The browser page, served at `/`: one static HTML file with its
//! AudioWorklets inline (no build step, no external script).

use axum::response::Html;

/// The page's HTML.
pub const PAGE: &str = include_str!("page.html");

/// `GET /`: the page.
pub async fn page() -> Html<&'static str> {
    Html(PAGE)
}
