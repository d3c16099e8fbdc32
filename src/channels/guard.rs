//! The SSRF guard for every outbound URL (Slack, Teams, an organisation's
//! webhook): `https` only, a host that is a name (no integer-encoded or
//! otherwise disguised address), and every address it resolves to public.
//! The poster then connects to an address this guard checked, never to a
//! second lookup's (no DNS rebinding). Refusals name no part of the URL: the
//! URL is a credential for Slack and Teams.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// A URL that passed the syntactic checks; its addresses are checked when
/// resolved (`public_only`).
#[derive(Clone, PartialEq, Eq)]
pub struct TargetUrl {
    pub(crate) scheme_https: bool,
    pub(crate) host: String,
    pub(crate) port: u16,
    /// Path and query, e.g. `/services/T000/B000/XXXX`.
    pub(crate) path: String,
}

/// Built only by `check_url`; read-only outside this crate.
impl TargetUrl {
    pub fn host(&self) -> &str {
        &self.host
    }
    pub fn port(&self) -> u16 {
        self.port
    }
    pub fn path(&self) -> &str {
        &self.path
    }
    pub fn is_https(&self) -> bool {
        self.scheme_https
    }
}

/// Never prints the URL: for Slack and Teams it is the credential.
impl std::fmt::Debug for TargetUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TargetUrl(<redacted>)")
    }
}

/// Local receivers a test may reach (`host:port`, plain http allowed): set
/// only by test wiring and by `NOTIFY_TEST_ONLY_LOCAL_TARGETS`, which the
/// stack never sets (`scripts/check-template.py` fails if it does).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TestOnlyAllowance {
    pub local_targets: Vec<String>,
}

impl TestOnlyAllowance {
    /// Whether an entry is acceptable at all: a loopback receiver
    /// (`127.0.0.1`, `[::1]` or `localhost`, with a port), nothing else.
    pub fn valid_entry(entry: &str) -> bool {
        let Some((host, port)) = entry.rsplit_once(':') else {
            return false;
        };
        matches!(host, "127.0.0.1" | "[::1]" | "localhost")
            && port.parse::<u16>().is_ok_and(|p| p > 0)
    }

    pub fn allows(&self, host: &str, port: u16) -> bool {
        self.local_targets
            .iter()
            .any(|t| t.eq_ignore_ascii_case(&format!("{host}:{port}")))
    }
}

/// Why a URL is refused (no part of it is quoted).
pub type Refusal = &'static str;

/// Parses and checks a target URL. `hosts`, when given, is the list of host
/// names (exact, or `.suffix`) the channel allows (Slack, Teams).
pub fn check_url(
    url: &str,
    hosts: Option<&[&str]>,
    allowance: &TestOnlyAllowance,
) -> Result<TargetUrl, Refusal> {
    let url = url.trim();
    if url.len() > 2048 || url.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err("the URL is not a single well-formed URL");
    }
    let (scheme_https, rest) = if let Some(r) = url.strip_prefix("https://") {
        (true, r)
    } else if let Some(r) = url.strip_prefix("http://") {
        (false, r)
    } else {
        return Err("only https URLs are allowed");
    };
    let (authority, path) = match rest.find(['/', '?', '#']) {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if authority.contains('@') {
        return Err("a URL with credentials before the host is not allowed");
    }
    if path.contains('#') {
        return Err("a URL with a fragment is not allowed");
    }
    let (host, port) = split_host_port(authority)?;
    // One trailing dot (the root) is the same name; more is not a name.
    let host = host.strip_suffix('.').unwrap_or(host).to_ascii_lowercase();
    let default_port = if scheme_https { 443 } else { 80 };
    let port = port.unwrap_or(default_port);
    let local = allowance.allows(&host, port);
    if !scheme_https && !local {
        return Err("only https URLs are allowed");
    }
    if !local {
        host_is_a_name(&host)?;
        if let Some(allowed) = hosts
            && !allowed.iter().any(|a| match a.strip_prefix('.') {
                Some(suffix) => host.ends_with(&format!(".{suffix}")),
                None => host == *a,
            })
        {
            return Err("the host is not one this channel's webhooks use");
        }
    }
    Ok(TargetUrl {
        scheme_https,
        host,
        port,
        path: if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        },
    })
}

fn split_host_port(authority: &str) -> Result<(&str, Option<u16>), Refusal> {
    if authority.is_empty() {
        return Err("the URL has no host");
    }
    if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal: checked (and refused) as an address below.
        let end = rest.find(']').ok_or("the URL's host is not well formed")?;
        let host = &authority[..end + 2];
        let port = match &rest[end + 1..] {
            "" => None,
            p => Some(parse_port(p.strip_prefix(':').ok_or("bad port")?)?),
        };
        return Ok((host, port));
    }
    match authority.rsplit_once(':') {
        Some((h, p)) => Ok((h, Some(parse_port(p)?))),
        None => Ok((authority, None)),
    }
}

fn parse_port(p: &str) -> Result<u16, Refusal> {
    p.parse::<u16>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or("the URL's port is not valid")
}

/// A host must be a DNS name: not an address literal in any spelling
/// (dotted, integer `2130706433`, hex `0x7f000001`, octal `0177.0.0.1`,
/// IPv6 `[::1]`), which would skip name resolution and its check.
fn host_is_a_name(host: &str) -> Result<(), Refusal> {
    if host.starts_with('[') || host.parse::<IpAddr>().is_ok() {
        return Err("the host is an address, not a name");
    }
    let labels: Vec<&str> = host.split('.').collect();
    let valid_label = |l: &&str| {
        !l.is_empty()
            && l.len() <= 63
            && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !l.starts_with('-')
            && !l.ends_with('-')
    };
    if host.len() > 253 || !labels.iter().all(valid_label) {
        return Err("the host is not a valid name");
    }
    // Every label numeric or hex-looking: an encoded address, not a name.
    let numeric = |l: &&str| {
        l.chars().all(|c| c.is_ascii_digit())
            || (l.starts_with("0x") && l[2..].chars().all(|c| c.is_ascii_hexdigit()))
    };
    if labels.iter().all(numeric) {
        return Err("the host is an address, not a name");
    }
    // The last label (the top-level domain) is never all digits.
    if labels.last().is_some_and(numeric) {
        return Err("the host is not a valid name");
    }
    Ok(())
}

/// True when the address is on the public internet: not loopback, private,
/// link-local (169.254.169.254 included), CGNAT, unique-local, multicast,
/// documentation or reserved, and not an IPv4 address hidden in IPv6.
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => is_public_v6(v6),
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_broadcast()
        || ip.is_multicast()
        || a == 0
        || (a == 100 && (64..=127).contains(&b)) // CGNAT 100.64/10
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 192 && b == 0 && c == 2) // documentation
        || (a == 198 && b == 51 && c == 100)
        || (a == 203 && b == 0 && c == 113)
        || (a == 198 && (18..=19).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

fn is_public_v6(ip: Ipv6Addr) -> bool {
    let s = ip.segments();
    // IPv4-mapped (::ffff:a.b.c.d) and IPv4-compatible (::a.b.c.d): the IPv4 decides.
    if let Some(v4) = ip.to_ipv4_mapped() {
        return is_public_v4(v4);
    }
    if s[..6] == [0; 6] && !ip.is_unspecified() && !ip.is_loopback() {
        return is_public_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
    }
    // NAT64 (64:ff9b::/96) and 6to4 (2002::/16) embed an IPv4 address.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2..6] == [0; 4] {
        return is_public_v4(Ipv4Addr::from(((s[6] as u32) << 16) | s[7] as u32));
    }
    // Local-use NAT64 (64:ff9b:1::/48) and IPv4-translated (::ffff:0:a.b.c.d):
    // never a public endpoint.
    if (s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1)
        || (s[..4] == [0; 4] && s[4] == 0xffff && s[5] == 0)
    {
        return false;
    }
    if s[0] == 0x2002 {
        return is_public_v4(Ipv4Addr::from(((s[1] as u32) << 16) | s[2] as u32));
    }
    !(ip.is_unspecified()
        || ip.is_loopback()
        || ip.is_multicast()
        || (s[0] & 0xfe00) == 0xfc00 // unique local fc00::/7
        || (s[0] & 0xffc0) == 0xfe80 // link-local fe80::/10
        || (s[0] & 0xffc0) == 0xfec0 // site-local (deprecated)
        || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
        || (s[0] == 0x2001 && s[1] == 0) // Teredo
        || s[0] == 0x0100 && s[1..4] == [0; 3]) // discard-only
}

/// The addresses of a resolved target that may be connected to: all of them
/// public (one private address refuses the whole name: rebinding tricks
/// answer a mix), or, for a test's local receiver, any.
pub fn public_only(
    addrs: &[std::net::SocketAddr],
    local_allowed: bool,
) -> Result<Vec<std::net::SocketAddr>, Refusal> {
    if addrs.is_empty() {
        return Err("the host does not resolve");
    }
    if !local_allowed && addrs.iter().any(|a| !is_public(a.ip())) {
        return Err("the host resolves to an address that is not public");
    }
    Ok(addrs.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> Refusal {
        check_url(url, None, &TestOnlyAllowance::default())
            .err()
            .unwrap_or_else(|| panic!("{url} should be refused"))
    }

    #[test]
    fn hostile_urls_are_refused_by_syntax() {
        for url in [
            "http://hooks.example.com/x",
            "ftp://hooks.example.com/x",
            "file:///etc/passwd",
            "https://127.0.0.1/x",
            "https://169.254.169.254/latest/meta-data/",
            "https://2130706433/x",
            "https://0x7f000001/x",
            "https://0177.0.0.1/x",
            "https://127.1/x",
            "https://[::1]/x",
            "https://[::ffff:127.0.0.1]/x",
            "https://user:pass@hooks.example.com/x",
            "https://hooks.example.com/x#frag",
            "https://hooks example.com/x",
            "https:///x",
            "https://hooks.example.com:0/x",
            "https://-bad-.example.com/x",
            "https://hooks.example.com../x",
            "https://hooks%2eexample.com/x",
            "https://hooks.example.com\\@evil.example/x",
        ] {
            refused(url);
        }
    }

    #[test]
    fn channel_hosts_are_enforced() {
        let none = TestOnlyAllowance::default();
        let slack = ["hooks.slack.com"];
        assert!(
            check_url(
                "https://hooks.slack.com/services/T/B/X",
                Some(&slack),
                &none
            )
            .is_ok()
        );
        assert!(
            check_url(
                "https://hooks.slack.com.evil.example/x",
                Some(&slack),
                &none
            )
            .is_err()
        );
        let teams = [".logic.azure.com", ".api.powerplatform.com"];
        assert!(
            check_url(
                "https://prod-01.westus.logic.azure.com:443/workflows/x",
                Some(&teams),
                &none
            )
            .is_ok()
        );
        assert!(
            check_url(
                "https://logic.azure.com.evil.example/x",
                Some(&teams),
                &none
            )
            .is_err()
        );
        assert!(check_url("https://evillogic.azure.com/x", Some(&teams), &none).is_err());
    }

    #[test]
    fn addresses_that_are_not_public_are_refused() {
        for ip in [
            "127.0.0.1",
            "10.1.2.3",
            "172.16.0.1",
            "192.168.1.1",
            "169.254.169.254",
            "100.64.0.1",
            "0.0.0.0",
            "224.0.0.1",
            "255.255.255.255",
            "192.0.2.1",
            "::1",
            "::",
            "fc00::1",
            "fd12::1",
            "fe80::1",
            "::ffff:127.0.0.1",
            "::ffff:10.0.0.1",
            "64:ff9b::a00:1",
            "2002:7f00:1::",
            "2001:db8::1",
        ] {
            assert!(!is_public(ip.parse().unwrap()), "{ip} must not be public");
        }
        for ip in [
            "52.94.236.248",
            "3.5.140.2",
            "2600:1f18::1",
            "::ffff:52.94.236.248",
        ] {
            assert!(is_public(ip.parse().unwrap()), "{ip} is public");
        }
    }

    #[test]
    fn a_local_receiver_needs_the_explicit_test_allowance() {
        assert!(
            check_url(
                "http://127.0.0.1:9999/hook",
                None,
                &TestOnlyAllowance::default()
            )
            .is_err()
        );
        let allowance = TestOnlyAllowance {
            local_targets: vec!["127.0.0.1:9999".into()],
        };
        let t = check_url("http://127.0.0.1:9999/hook", None, &allowance).unwrap();
        assert_eq!(
            (t.port, t.path.as_str(), t.scheme_https),
            (9999, "/hook", false)
        );
        assert!(check_url("http://127.0.0.1:9998/hook", None, &allowance).is_err());
        assert_eq!(format!("{t:?}"), "TargetUrl(<redacted>)");
    }
}
