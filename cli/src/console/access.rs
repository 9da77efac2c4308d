//! Who may use the console: the token required beyond loopback, the session a login
//! gives, the form token every POST carries, and the checks of a request's Host and origin.

use std::net::SocketAddr;

use axum::http::{header, HeaderMap};

use super::error::ConsoleError;

/// The session cookie's name.
pub(crate) const COOKIE: &str = "steadfast_console_session";
/// The shortest token accepted.
const MIN_TOKEN: usize = 16;

/// The console's access rules.
#[derive(Debug)]
pub(crate) struct Auth {
    /// The token required beyond loopback (`None`: loopback only, no login).
    pub(crate) token: Option<String>,
    /// The session cookie's value after a login.
    pub(crate) session: String,
    /// The token every form carries.
    form_token: String,
}

impl Auth {
    /// The rules for a console listening on `listen`: beyond loopback a token is required.
    pub(crate) fn new(listen: SocketAddr, token: Option<String>) -> Result<Self, ConsoleError> {
        let token = token.filter(|t| !t.is_empty());
        match &token {
            None if !listen.ip().is_loopback() => {
                return Err(ConsoleError::Config(format!(
                    "--listen {listen} is beyond loopback: give --token (or \
                     STEADFAST_CONSOLE_TOKEN) so that only holders of it can use the console"
                )))
            }
            Some(t) if t.chars().count() < MIN_TOKEN => {
                return Err(ConsoleError::Config(format!(
                    "the token must be at least {MIN_TOKEN} characters"
                )))
            }
            _ => {}
        }
        Ok(Auth {
            token,
            session: uuid::Uuid::new_v4().simple().to_string(),
            form_token: uuid::Uuid::new_v4().simple().to_string(),
        })
    }

    /// The token a form of this console carries.
    pub(crate) fn form_token(&self) -> &str {
        &self.form_token
    }

    /// Refuses a form without this console's form token.
    pub(crate) fn check_form(&self, given: &str) -> Result<(), ConsoleError> {
        if same(given, &self.form_token) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(
                "the form is not one of this console's (reload the page and submit again)"
                    .to_owned(),
            ))
        }
    }

    /// Whether `headers` carry the session cookie or the bearer token.
    pub(crate) fn admits(&self, headers: &HeaderMap) -> bool {
        let Some(token) = &self.token else {
            return true;
        };
        let bearer = headers
            .get_all(header::AUTHORIZATION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(|v| v.strip_prefix("Bearer "))
            .any(|given| same(given.trim(), token));
        bearer
            || headers
                .get_all(header::COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .filter_map(|c| c.trim().split_once('='))
                .any(|(name, value)| name == COOKIE && same(value, &self.session))
    }
}

/// Compares in time independent of where the strings differ.
pub(crate) fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Whether `host` (a Host header) names a loopback address.
pub(crate) fn is_loopback_host(host: &str) -> bool {
    let name = match host.strip_prefix('[') {
        Some(rest) => rest.split(']').next().unwrap_or(""),
        None => host.rsplit_once(':').map_or(host, |(name, _)| name),
    };
    name.eq_ignore_ascii_case("localhost")
        || name
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why a state-changing request looks cross-site, if it does: the browser's
/// `Sec-Fetch-Site`, or an `Origin` that is not this console's.
pub(crate) fn cross_site(headers: &HeaderMap, host: &str) -> Option<String> {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if let Some(site) = fetch_site {
        if site != "same-origin" && site != "none" {
            return Some(format!("refused: a {site} request may not change anything"));
        }
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match origin {
        Some(origin)
            if origin != format!("http://{host}") && origin != format!("https://{host}") =>
        {
            Some(format!(
                "refused: a request from {origin} may not change anything"
            ))
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    #[test]
    fn beyond_loopback_needs_a_long_enough_token() {
        let any: SocketAddr = "0.0.0.0:9800".parse().expect("address");
        let local: SocketAddr = "127.0.0.1:9800".parse().expect("address");
        assert!(Auth::new(any, None).is_err());
        assert!(Auth::new(any, Some(String::new())).is_err());
        assert!(Auth::new(any, Some("short".into())).is_err());
        assert!(Auth::new(any, Some("a-token-of-enough-length".into())).is_ok());
        assert!(Auth::new(local, None).is_ok());
    }

    #[test]
    fn bearer_token_or_session_cookie_admits() {
        let any: SocketAddr = "0.0.0.0:9800".parse().expect("address");
        let auth = Auth::new(any, Some("a-token-of-enough-length".into())).expect("auth");
        let mut headers = HeaderMap::new();
        assert!(!auth.admits(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer a-token-of-enough-lengtX"),
        );
        assert!(!auth.admits(&headers));
        headers.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer a-token-of-enough-length"),
        );
        assert!(auth.admits(&headers));
        let mut headers = HeaderMap::new();
        let cookie = format!("other=1; {COOKIE}={}", auth.session);
        headers.insert(
            header::COOKIE,
            HeaderValue::from_str(&cookie).expect("cookie"),
        );
        assert!(auth.admits(&headers));
    }

    #[test]
    fn loopback_hosts_are_told_apart() {
        for host in [
            "127.0.0.1:9800",
            "localhost:9800",
            "[::1]:9800",
            "localhost",
            "127.0.0.2",
        ] {
            assert!(is_loopback_host(host), "{host}");
        }
        for host in ["evil.example:9800", "10.0.0.1:9800", "", "[fe80::1]:80"] {
            assert!(!is_loopback_host(host), "{host}");
        }
    }

    #[test]
    fn other_sites_may_not_post() {
        let mut headers = HeaderMap::new();
        assert_eq!(cross_site(&headers, "127.0.0.1:9800"), None);
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9800"),
        );
        assert_eq!(cross_site(&headers, "127.0.0.1:9800"), None);
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(cross_site(&headers, "127.0.0.1:9800").is_some());
        let mut headers = HeaderMap::new();
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&headers, "127.0.0.1:9800").is_some());
    }
}
