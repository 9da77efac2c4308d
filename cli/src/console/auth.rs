//! The checks every request passes (Host, origin, session) as middleware, the security
//! headers of every answer, and the login page. The rules themselves are in `access`.
//!
//! - Without a token the console only binds loopback and only answers requests addressed to
//!   a loopback name (a page elsewhere cannot reach it by re-pointing its own DNS name).
//! - With a token, every page needs the session cookie the login page sets, or
//!   `Authorization: Bearer <token>`.
//! - Every POST carries the per-process form token (only pages of the console know it) and
//!   is refused when the browser says it comes from another site.
//! - Every answer carries a content security policy that allows no script, no frame and no
//!   form target elsewhere.

use axum::extract::{Form, Query, Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use maud::html;
use serde::Deserialize;

use super::access::{is_loopback_host, local_path, same};
use super::error::ConsoleError;
use super::layout;
use super::state::Shared;

/// Checks every request (its Host without a token, the origin of a POST) and sets the
/// security headers of every answer.
pub(crate) async fn guard_request(
    State(console): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    let headers = request.headers();
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let refusal = if console.auth.token.is_none() && !is_loopback_host(&host) {
        Some(format!(
            "this console answers only requests addressed to a loopback name, not {host:?}; \
             start it with --token to use it from elsewhere"
        ))
    } else if request.method() != Method::GET && request.method() != Method::HEAD {
        console.auth.cross_site(headers, &host)
    } else {
        None
    };
    let mut response = match refusal {
        Some(why) => ConsoleError::Forbidden(why).into_response(),
        None => next.run(request).await,
    };
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; \
             frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("same-origin"),
    );
    h.entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Lets a request with the session or the token through; sends a browser to the login page
/// and answers anything else 401.
pub(crate) async fn require_session(
    State(console): State<Shared>,
    request: Request,
    next: Next,
) -> Response {
    if console.auth.admits(request.headers()) {
        return next.run(request).await;
    }
    let wants_html = request
        .headers()
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|a| a.contains("text/html"));
    if request.method() == Method::GET && wants_html {
        let target = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        let query = serde_urlencoded::to_string([("next", target)]).unwrap_or_default();
        return Redirect::to(&format!("/login?{query}")).into_response();
    }
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "this console needs its token: log in on /login, or send Authorization: Bearer <token>\n",
    )
        .into_response()
}

/// The login page's query.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginQuery {
    /// Where to go after the login.
    next: Option<String>,
}

/// The login page.
pub(crate) async fn login_page(
    State(console): State<Shared>,
    Query(query): Query<LoginQuery>,
) -> Response {
    login_form(&console, query.next.as_deref(), None).into_response()
}

fn login_form(console: &Shared, next: Option<&str>, failed: Option<&str>) -> maud::Markup {
    layout::page(
        "Log in",
        html! {
            h1 { "Log in" }
            @if console.auth.token.is_none() {
                p { "This console needs no token: it answers on loopback only. "
                    a href="/" { "Go to the overview" } }
            } @else {
                @if let Some(why) = failed { p.error { (why) } }
                form method="post" action="/login" {
                    input type="hidden" name="form" value=(console.auth.login_token());
                    input type="hidden" name="next" value=(next.unwrap_or("/"));
                    label { "Token " input type="password" name="token" autofocus; }
                    " "
                    button type="submit" { "Log in" }
                }
            }
        },
    )
}

/// The login form, posted.
#[derive(Debug, Deserialize)]
pub(crate) struct LoginForm {
    form: String,
    token: String,
    next: Option<String>,
}

/// Checks the token and sets the session cookie.
pub(crate) async fn login(
    State(console): State<Shared>,
    Form(login): Form<LoginForm>,
) -> Result<Response, ConsoleError> {
    console.auth.check_login_form(&login.form)?;
    let Some(token) = &console.auth.token else {
        return Ok(Redirect::to("/").into_response());
    };
    if !same(&login.token, token) {
        let page = login_form(
            &console,
            login.next.as_deref(),
            Some("That is not the token."),
        );
        return Ok((StatusCode::UNAUTHORIZED, page).into_response());
    }
    // Only a path of this console: never `//elsewhere` or a full URL.
    let next = local_path(login.next.as_deref());
    let cookie = console.auth.cookie();
    Ok(([(header::SET_COOKIE, cookie)], Redirect::to(next)).into_response())
}
