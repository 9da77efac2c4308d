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
    /// The token of the login form (the login page is shown to anyone, so it does not
    /// carry the other).
    login_token: String,
    /// The origin browsers use when a proxy in front rewrites the Host header, such as
    /// `https://console.example.com`.
    public_origin: Option<String>,
}

impl Auth {
    /// The rules for a console listening on `listen`: beyond loopback a token is required.
    pub(crate) fn new(
        listen: SocketAddr,
        token: Option<String>,
        public_url: Option<&str>,
    ) -> Result<Self, ConsoleError> {
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
        let public_origin = public_url.map(origin_of).transpose()?;
        Ok(Auth {
            token,
            public_origin,
            login_token: uuid::Uuid::new_v4().simple().to_string(),
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

    /// The token the login form carries.
    pub(crate) fn login_token(&self) -> &str {
        &self.login_token
    }

    /// Refuses a login form without this console's login-form token.
    pub(crate) fn check_login_form(&self, given: &str) -> Result<(), ConsoleError> {
        if same(given, &self.login_token) {
            Ok(())
        } else {
            Err(ConsoleError::Forbidden(
                "the login form is not this console's (reload it and log in again)".to_owned(),
            ))
        }
    }

    /// The session cookie's attributes: `Secure` when browsers reach the console over
    /// HTTPS (`--public-url https://…`).
    pub(crate) fn cookie(&self) -> String {
        let secure = self
            .public_origin
            .as_deref()
            .is_some_and(|o| o.starts_with("https://"));
        format!(
            "{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict{}",
            self.session,
            if secure { "; Secure" } else { "" }
        )
    }

    /// Why a state-changing request looks cross-site, if it does: the browser's
    /// `Sec-Fetch-Site`, or an `Origin` that is neither this console's (by `host`) nor the
    /// public origin.
    pub(crate) fn cross_site(&self, headers: &HeaderMap, host: &str) -> Option<String> {
        cross_site(headers, host, self.public_origin.as_deref())
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
    // Every byte up to the longer length is compared, so where they differ does not show
    // in the time taken (the longer length still does).
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let differ = (0..a.len().max(b.len())).fold(u8::from(a.len() != b.len()), |acc, i| {
        acc | (a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0))
    });
    differ == 0
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

/// `scheme://host[:port]` of a URL without path, query or anything else.
fn origin_of(url: &str) -> Result<String, ConsoleError> {
    let bad = || {
        ConsoleError::Config(format!(
            "--public-url {url:?}: expected http(s)://host[:port], such as \
             https://console.example.com"
        ))
    };
    let url = url.trim_end_matches('/');
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(bad)?;
    if rest.is_empty() || rest.contains(['/', '?', '#', '@', ' ']) {
        return Err(bad());
    }
    Ok(url.to_ascii_lowercase())
}

/// Where the login may send the browser: a path of this console (`/…`, not `//…`) of the
/// characters its own links use, or `/`.
pub(crate) fn local_path(next: Option<&str>) -> &str {
    match next {
        Some(path)
            if path.starts_with('/')
                && !path.starts_with("//")
                && path
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-._~/?=&%+".contains(&b)) =>
        {
            path
        }
        _ => "/",
    }
}

/// Why a state-changing request looks cross-site, if it does: the browser's
/// `Sec-Fetch-Site`, or an `Origin` that is not this console's (`host`, or `public`).
fn cross_site(headers: &HeaderMap, host: &str, public: Option<&str>) -> Option<String> {
    let fetch_site = headers.get("sec-fetch-site").and_then(|v| v.to_str().ok());
    if let Some(site) = fetch_site {
        if site != "same-origin" && site != "none" {
            return Some(format!("refused: a {site} request may not change anything"));
        }
    }
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    match origin {
        Some(origin)
            if origin != format!("http://{host}")
                && origin != format!("https://{host}")
                && public.is_none_or(|p| !origin.eq_ignore_ascii_case(p)) =>
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
        assert!(Auth::new(any, None, None).is_err());
        assert!(Auth::new(any, Some(String::new()), None).is_err());
        assert!(Auth::new(any, Some("short".into()), None).is_err());
        assert!(Auth::new(any, Some("a-token-of-enough-length".into()), None).is_ok());
        assert!(Auth::new(local, None, None).is_ok());
        assert!(Auth::new(local, None, Some("console.example.com")).is_err());
        assert!(Auth::new(local, None, Some("https://c.example/path")).is_err());
        let public = Auth::new(local, None, Some("https://Console.example:8443/")).expect("auth");
        assert!(public.cookie().ends_with("; Secure"));
        assert!(!Auth::new(local, None, None)
            .expect("auth")
            .cookie()
            .contains("Secure"));
    }

    #[test]
    fn bearer_token_or_session_cookie_admits() {
        let any: SocketAddr = "0.0.0.0:9800".parse().expect("address");
        let auth = Auth::new(any, Some("a-token-of-enough-length".into()), None).expect("auth");
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
        let host = "127.0.0.1:9800";
        assert_eq!(cross_site(&headers, host, None), None);
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://127.0.0.1:9800"),
        );
        assert_eq!(cross_site(&headers, host, None), None);
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("http://evil.example"),
        );
        assert!(cross_site(&headers, host, None).is_some());
        assert!(cross_site(&headers, host, Some("https://console.example")).is_some());
        // Behind a proxy that rewrites Host: the public origin is this console's.
        headers.insert(
            header::ORIGIN,
            HeaderValue::from_static("https://console.example"),
        );
        assert_eq!(
            cross_site(&headers, host, Some("https://console.example")),
            None
        );
        headers.insert(header::ORIGIN, HeaderValue::from_static("null"));
        assert!(cross_site(&headers, host, None).is_some());
        let mut headers = HeaderMap::new();
        headers.insert("sec-fetch-site", HeaderValue::from_static("cross-site"));
        assert!(cross_site(&headers, host, None).is_some());
    }

    #[test]
    fn tokens_are_the_same_only_byte_for_byte() {
        assert!(same("a-token", "a-token"));
        assert!(same("", ""));
        for other in ["a-tokeN", "a-toke", "a-token-", "", "b-token"] {
            assert!(!same("a-token", other), "{other:?}");
            assert!(!same(other, "a-token"), "{other:?}");
        }
        // Bytes past the shorter one's end, equal to what it is padded with, still differ.
        assert!(!same("ab", "ab\0"));
    }

    #[test]
    fn the_login_sends_only_to_paths_of_the_console() {
        for (next, to) in [
            (Some("/groups/g%20x?a=b&c=d"), "/groups/g%20x?a=b&c=d"),
            (Some("/"), "/"),
            (None, "/"),
            (Some("//evil.example"), "/"),
            (Some("/\t/evil.example"), "/"),
            (Some("/\\evil.example"), "/"),
            (Some("https://evil.example"), "/"),
            (Some("/a b"), "/"),
        ] {
            assert_eq!(local_path(next), to, "{next:?}");
        }
    }
}
