//! The web console, embedded in the binary (built from `console/` by
//! `node/build.rs`) and served at `/` of the HTTP listener. It reads
//! everything through the node's own HTTP API (docs/JOBS.md) and fetches
//! nothing from elsewhere: its Content-Security-Policy allows this origin
//! only.

use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};

const INDEX: &str = include_str!("../../console/src/index.html");
const STYLE: &str = include_str!("../../console/src/style.css");
const SCRIPT: &str = include_str!("../../console/dist/console.js");

/// Scripts and data from this origin only; CodeMirror sets styles inline.
const POLICY: &str = "default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; frame-ancestors 'none'";

fn asset(body: &'static str, content_type: &'static str) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    response
}

/// `GET /`.
pub async fn index() -> Response {
    asset(INDEX, "text/html; charset=utf-8")
}

/// `GET /console.js`.
pub async fn script() -> Response {
    asset(SCRIPT, "text/javascript; charset=utf-8")
}

/// `GET /console.css`.
pub async fn style() -> Response {
    asset(STYLE, "text/css; charset=utf-8")
}
