//! Content parts of a message: text and images.

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// How much detail the model should use for an image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageDetail {
    /// The provider decides (not sent on the wire).
    #[default]
    Auto,
    /// Low resolution, fewer tokens.
    Low,
    /// High resolution.
    High,
}

impl ImageDetail {
    /// The wire value.
    pub fn as_str(self) -> &'static str {
        match self {
            ImageDetail::Auto => "auto",
            ImageDetail::Low => "low",
            ImageDetail::High => "high",
        }
    }
}

/// An image given to the model, by URL or inline as a data URL.
///
/// The URL is reference-counted: contexts are cloned for checkpoints, and an
/// inline image can be megabytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageContent {
    /// An `https://` URL or a `data:<mime>;base64,…` URL.
    pub url: Arc<str>,
    /// Requested detail; `auto` is not sent.
    #[serde(default)]
    pub detail: ImageDetail,
}

impl ImageContent {
    /// An image the provider fetches from a URL.
    pub fn from_url(url: impl Into<String>) -> Self {
        Self {
            url: Arc::from(url.into()),
            detail: ImageDetail::Auto,
        }
    }

    /// An inline image: the bytes become a base64 data URL with the given mime type.
    pub fn from_bytes(bytes: &[u8], mime_type: &str) -> Self {
        let mut url = format!("data:{mime_type};base64,");
        base64::engine::general_purpose::STANDARD.encode_string(bytes, &mut url);
        Self {
            url: Arc::from(url),
            detail: ImageDetail::Auto,
        }
    }

    /// Sets the detail level.
    pub fn with_detail(mut self, detail: ImageDetail) -> Self {
        self.detail = detail;
        self
    }
}

/// One part of a message's content.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "value", rename_all = "snake_case")]
#[non_exhaustive]
pub enum ContentPart {
    /// Plain text.
    Text(String),
    /// An image.
    Image(ImageContent),
}

impl ContentPart {
    /// An estimate of the request bytes of this part.
    pub fn approx_bytes(&self) -> usize {
        match self {
            ContentPart::Text(t) => t.len(),
            ContentPart::Image(i) => i.url.len() + 48,
        }
    }
}

impl From<&str> for ContentPart {
    fn from(value: &str) -> Self {
        ContentPart::Text(value.to_string())
    }
}

impl From<String> for ContentPart {
    fn from(value: String) -> Self {
        ContentPart::Text(value)
    }
}

impl From<ImageContent> for ContentPart {
    fn from(value: ImageContent) -> Self {
        ContentPart::Image(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_become_a_data_url_with_mime_type() {
        let img = ImageContent::from_bytes(b"hi", "image/jpeg");
        assert_eq!(&*img.url, "data:image/jpeg;base64,aGk=");
        assert_eq!(img.detail, ImageDetail::Auto);
    }
}
