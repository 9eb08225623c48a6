//! `GET /ui` and `GET /ui/app.js`: the dashboard, a page and its script compiled into the
//! binary (nothing is loaded from elsewhere). The page reads `/cluster/overview` with the
//! token the user gives it (kept in the tab's session storage), so serving it needs none.
//! The content security policy lets it run only its own script and talk only to this node.

use axum::http::header;
use axum::response::{IntoResponse, Response};

const PAGE: &str = include_str!("ui/index.html");
const SCRIPT: &str = include_str!("ui/app.js");

/// What the page may load and where it may connect: itself only.
const POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'unsafe-inline'; \
                      connect-src 'self'; img-src 'self' data:; base-uri 'none'; \
                      form-action 'none'; frame-ancestors 'none'";

/// `GET /ui`
pub async fn page() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        PAGE,
    )
        .into_response()
}

/// `GET /ui/app.js`
pub async fn script() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/javascript; charset=utf-8"),
            (header::CACHE_CONTROL, "no-cache"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        SCRIPT,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_loads_only_its_own_script_and_polls_the_overview() {
        assert!(PAGE.contains(r#"<script src="/ui/app.js">"#));
        assert!(
            !PAGE.contains("http://") && !PAGE.contains("https://"),
            "nothing from elsewhere"
        );
        assert!(SCRIPT.contains("/cluster/overview"));
        assert!(
            !SCRIPT.contains("innerHTML"),
            "server text must go in as text"
        );
    }
}
