//! HTTP clients of the daemon (peer messages, forwarded client frames).
//!
//! ureq resolves a URL before it looks in its connection pool, and with a
//! timeout set it resolves on a new thread, even an IP literal. At a peer
//! message per heartbeat and per batch that was a thread per message
//! (docs/benchmarks.md, "Replicated realms"). [`LiteralResolver`] answers
//! IP-literal hosts (what `realm new` writes for loopback and LAN
//! deployments) on the calling thread and hands names to ureq's resolver.

use std::net::SocketAddr;
use std::time::Duration;

use ureq::config::Config;
use ureq::http::Uri;
use ureq::unversioned::resolver::{DefaultResolver, ResolvedSocketAddrs, Resolver};
use ureq::unversioned::transport::{DefaultConnector, NextTimeout};

/// Resolves `host:port` with an IP-literal host without a thread; anything
/// else through ureq's default resolver.
#[derive(Debug, Default)]
pub struct LiteralResolver {
    fallback: DefaultResolver,
}

/// The IP-literal socket address of a URI, if its host is one.
fn literal(uri: &Uri) -> Option<SocketAddr> {
    let authority = uri.authority()?;
    let port = authority.port_u16().or(match uri.scheme_str() {
        Some("https") => Some(443),
        Some("http") => Some(80),
        _ => None,
    })?;
    let host = authority
        .host()
        .trim_start_matches('[')
        .trim_end_matches(']');
    let ip: std::net::IpAddr = host.parse().ok()?;
    Some(SocketAddr::new(ip, port))
}

impl Resolver for LiteralResolver {
    fn resolve(
        &self,
        uri: &Uri,
        config: &Config,
        timeout: NextTimeout,
    ) -> Result<ResolvedSocketAddrs, ureq::Error> {
        match literal(uri) {
            Some(addr) => {
                let mut out = self.empty();
                out.push(addr);
                Ok(out)
            }
            None => self.fallback.resolve(uri, config, timeout),
        }
    }
}

/// An agent for host-to-host HTTP: non-2xx statuses are answers, not
/// errors; connect and overall timeouts as given; keep-alive pooling.
pub fn agent(connect: Duration, overall: Duration) -> ureq::Agent {
    let config = ureq::Agent::config_builder()
        .timeout_connect(Some(connect))
        .timeout_global(Some(overall))
        .http_status_as_error(false)
        .build();
    ureq::Agent::with_parts(config, DefaultConnector::new(), LiteralResolver::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_resolve_in_place_names_do_not() {
        let u: Uri = "http://127.0.0.1:8420/v1/peer".parse().unwrap();
        assert_eq!(literal(&u), Some("127.0.0.1:8420".parse().unwrap()));
        let u: Uri = "https://[::1]/x".parse().unwrap();
        assert_eq!(literal(&u), Some("[::1]:443".parse().unwrap()));
        let u: Uri = "http://vault.example.com:80/".parse().unwrap();
        assert_eq!(literal(&u), None);
    }
}
