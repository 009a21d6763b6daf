//! Connecting to Postgres: a `postgres://` (or `postgresql://`) URL in libpq's form,
//! completed from the `PG*` environment variables as libpq completes it, TLS through
//! rustls (never OpenSSL), and the form that is shown and stored, which never holds the
//! password.
//!
//! libpq's rules (PostgreSQL's "Connection Strings", "Environment Variables" and
//! "SSL Support" chapters): a part the URL leaves out comes from `PGHOST`, `PGPORT`,
//! `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`, `PGSSLROOTCERT`, `PGAPPNAME`,
//! `PGCONNECT_TIMEOUT`; `sslmode` is `disable`, `allow`, `prefer` (the default),
//! `require`, `verify-ca` or `verify-full`, and only the last two check the server's
//! certificate, unless `require` is given a root certificate (`sslrootcert`), which
//! makes it `verify-ca`. Here `verify-ca` is checked as `verify-full` (the host name
//! too): rustls checks both or neither.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use tokio_postgres::config::{Host, SslMode};

/// A Postgres server and database to connect to.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    config: tokio_postgres::Config,
    /// `sslmode` and `sslrootcert` as the URL (or, once completed, `PGSSLMODE` and
    /// `PGSSLROOTCERT`) gave them; `tls` is what they mean.
    mode: Option<String>,
    root: Option<String>,
    tls: Tls,
    /// The URL (without `sslmode`, `sslrootcert`) when it names hosts but no port: then
    /// `PGPORT` applies, as in libpq, and `config` (where tokio-postgres put 5432) is
    /// made again from it with that port.
    portless: Option<String>,
}

/// How the connection is encrypted.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tls {
    /// `sslmode=disable`.
    Off,
    /// `allow`, `prefer`: encrypted when the server offers it, the certificate unchecked.
    Offered,
    /// `require`: encrypted, the certificate unchecked.
    Unchecked,
    /// `verify-ca`, `verify-full`, or `require` with a root certificate: encrypted, the
    /// certificate checked against `sslrootcert` (or the web's roots without one).
    Verified(Option<PathBuf>),
}

/// A `--sink` or `--db` value that is no Postgres URL we can use.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BadUrl(String);

impl PgUrl {
    /// Whether `s` names Postgres (`postgres://` or `postgresql://`).
    pub fn is_postgres(s: &str) -> bool {
        s.starts_with("postgres://") || s.starts_with("postgresql://")
    }

    /// Completes what the URL left out from the `PG*` variables `env` gives, as libpq
    /// does, and the defaults: a 10-second connect timeout, `martech-sync` as the
    /// application name.
    ///
    /// # Errors
    /// When `PGSSLMODE` is no sslmode.
    pub fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> Result<PgUrl, BadUrl> {
        if let Some(url) = self.portless.take()
            && let Some(port) = env("PGPORT").and_then(|p| p.parse::<u16>().ok())
            && let Ok(config) = tokio_postgres::Config::from_str(&with_port(&url, port))
        {
            self.config = config;
        }
        let config = &mut self.config;
        if config.get_hosts().is_empty() {
            let hosts = env("PGHOST").unwrap_or_else(|| "localhost".to_owned());
            for host in hosts.split(',').filter(|h| !h.is_empty()) {
                if host.starts_with('/') {
                    config.host_path(host);
                } else {
                    config.host(host);
                }
            }
        }
        if config.get_ports().is_empty()
            && let Some(port) = env("PGPORT").and_then(|p| p.parse().ok())
        {
            config.port(port);
        }
        if config.get_user().is_none()
            && let Some(user) = env("PGUSER")
        {
            config.user(user);
        }
        if config.get_password().is_none()
            && let Some(password) = env("PGPASSWORD")
        {
            config.password(password);
        }
        if config.get_dbname().is_none()
            && let Some(db) = env("PGDATABASE")
        {
            config.dbname(db);
        }
        if config.get_application_name().is_none() {
            config.application_name(env("PGAPPNAME").unwrap_or_else(|| "martech-sync".into()));
        }
        if config.get_connect_timeout().is_none() {
            let secs = env("PGCONNECT_TIMEOUT")
                .and_then(|s| s.parse().ok())
                .unwrap_or(10);
            config.connect_timeout(Duration::from_secs(secs));
        }
        // The URL's sslmode and sslrootcert win, each on its own, as in libpq; a
        // PGSSLMODE that is no mode is refused, not read as the default.
        if self.mode.is_none() {
            self.mode = env("PGSSLMODE").filter(|m| !m.is_empty());
        }
        if self.root.is_none() {
            self.root = env("PGSSLROOTCERT").filter(|r| !r.is_empty());
        }
        self.tls = tls_mode(self.mode.as_deref(), self.root.clone())?;
        Ok(self)
    }

    /// Whether the URL itself holds a password (which `ps` shows).
    pub fn has_password(&self) -> bool {
        self.config.get_password().is_some()
    }

    /// [`PgUrl::with_env`] from this process's environment.
    ///
    /// # Errors
    /// When `PGSSLMODE` is no sslmode.
    pub fn from_environment(self) -> Result<PgUrl, BadUrl> {
        self.with_env(|name| std::env::var(name).ok())
    }

    /// Connects, and drives the connection on a task of its own.
    ///
    /// # Errors
    /// When the server cannot be reached, refuses the login or the TLS handshake fails;
    /// the message names the server as [`PgUrl`]'s `Display` does, never the password.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
        Ok(self.connect_watched().await?.0)
    }

    /// As [`PgUrl::connect`], with the task driving the connection: it ends when the
    /// connection does (the server went away, or the client was dropped).
    ///
    /// # Errors
    /// As [`PgUrl::connect`].
    pub async fn connect_watched(
        &self,
    ) -> Result<(tokio_postgres::Client, tokio::task::JoinHandle<()>)> {
        let mut config = self.config.clone();
        let (client, task) = match &self.tls {
            Tls::Off => {
                config.ssl_mode(SslMode::Disable);
                let (client, conn) = config.connect(tokio_postgres::NoTls).await?;
                (client, tokio::spawn(drive(conn)))
            }
            tls => {
                config.ssl_mode(match tls {
                    Tls::Offered => SslMode::Prefer,
                    _ => SslMode::Require,
                });
                let connector = tokio_postgres_rustls::MakeRustlsConnect::new(rustls_config(tls)?);
                let (client, conn) = config.connect(connector).await?;
                (client, tokio::spawn(drive(conn)))
            }
        };
        Ok((client, task))
    }
}

/// Runs a connection until it closes; a connection lost while in use fails the query
/// that used it, so its error is only logged.
async fn drive<S, T>(conn: tokio_postgres::Connection<S, T>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "postgres connection closed");
    }
}

/// `sslmode` (with `sslrootcert`) in libpq's meaning; no mode is `prefer`, or
/// `verify-ca` with a root certificate.
fn tls_mode(mode: Option<&str>, root: Option<String>) -> Result<Tls, BadUrl> {
    let root = root
        .filter(|r| !r.is_empty() && r != "system")
        .map(PathBuf::from);
    Ok(match mode {
        None if root.is_some() => Tls::Verified(root),
        None => Tls::Offered,
        Some("disable") => Tls::Off,
        Some("allow" | "prefer") => Tls::Offered,
        Some("require") if root.is_none() => Tls::Unchecked,
        Some("require" | "verify-ca" | "verify-full") => Tls::Verified(root),
        Some(other) => {
            return Err(BadUrl(format!(
                "sslmode={other}: use disable, allow, prefer, require, verify-ca or verify-full"
            )));
        }
    })
}

fn rustls_config(tls: &Tls) -> Result<rustls::ClientConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("starting TLS")?;
    Ok(match tls {
        Tls::Verified(root) => {
            let mut roots = rustls::RootCertStore::empty();
            match root {
                Some(path) => {
                    let pem = std::fs::read(path)
                        .with_context(|| format!("reading sslrootcert {}", path.display()))?;
                    for cert in rustls::pki_types::pem::PemObject::pem_slice_iter(&pem) {
                        let cert: CertificateDer<'static> = cert.with_context(|| {
                            format!("reading a certificate of {}", path.display())
                        })?;
                        roots.add(cert).context("adding a root certificate")?;
                    }
                }
                None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        }
        _ => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Unchecked(provider)))
            .with_no_client_auth(),
    })
}

/// libpq's `require` and `prefer`: the channel is encrypted and the handshake's
/// signatures are checked, but the certificate's issuer and name are not.
#[derive(Debug)]
struct Unchecked(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for Unchecked {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

impl FromStr for PgUrl {
    type Err = BadUrl;

    /// Parses a URL; `sslmode` and `sslrootcert` are taken out of its query (libpq's
    /// `verify-*` modes are ours to implement), the rest goes to tokio-postgres.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if !PgUrl::is_postgres(s) {
            return Err(BadUrl(format!(
                "`{}` is not a postgres:// URL",
                redact_text(s)
            )));
        }
        let (base, query) = s.split_once('?').unwrap_or((s, ""));
        let mut mode = None;
        let mut root = None;
        let mut rest = url::form_urlencoded::Serializer::new(String::new());
        for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
            match &*key {
                "sslmode" => mode = Some(value.into_owned()),
                "sslrootcert" => root = Some(value.into_owned()),
                _ => {
                    rest.append_pair(&key, &value);
                }
            }
        }
        let rest = rest.finish();
        let url = if rest.is_empty() {
            base.to_owned()
        } else {
            format!("{base}?{rest}")
        };
        let config = tokio_postgres::Config::from_str(&url).map_err(|e| {
            BadUrl(format!(
                "`{}` is not a Postgres URL we can use: {e}",
                redact_text(s)
            ))
        })?;
        // libpq and tokio-postgres end the user and password at the first '@': one
        // more is a password that needed percent-encoding, now part of a host name.
        if config
            .get_hosts()
            .iter()
            .any(|h| matches!(h, Host::Tcp(name) if name.contains('@')))
        {
            return Err(BadUrl(format!(
                "`{}`: write an '@' in the password as %40",
                redact_text(s)
            )));
        }
        let tls = tls_mode(mode.as_deref(), root.clone())?;
        let portless = (!config.get_hosts().is_empty() && !names_a_port(&url)).then_some(url);
        Ok(PgUrl {
            config,
            mode,
            root,
            tls,
            portless,
        })
    }
}

/// The host list of a URL's authority (`host1:port1,host2`), and where it starts.
fn host_list(url: &str) -> Option<(usize, &str)> {
    let start = url.find("://")? + 3;
    let rest = &url[start..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..end];
    let hosts_at = authority.rfind('@').map_or(0, |at| at + 1);
    Some((start + hosts_at, &authority[hosts_at..]))
}

/// Whether one of the URL's hosts carries a port, or its query does (`port=`).
fn names_a_port(url: &str) -> bool {
    let in_query = url
        .split_once('?')
        .is_some_and(|(_, q)| url::form_urlencoded::parse(q.as_bytes()).any(|(k, _)| k == "port"));
    in_query
        || host_list(url).is_some_and(|(_, hosts)| {
            hosts.split(',').any(|host| match host.rsplit_once(']') {
                Some((_, after)) => after.starts_with(':'),
                None => host.contains(':'),
            })
        })
}

/// The URL with `:port` after each of its hosts.
fn with_port(url: &str, port: u16) -> String {
    let Some((at, hosts)) = host_list(url) else {
        return url.to_owned();
    };
    let ported: Vec<String> = hosts
        .split(',')
        .map(|host| format!("{host}:{port}"))
        .collect();
    format!(
        "{}{}{}",
        &url[..at],
        ported.join(","),
        &url[at + hosts.len()..]
    )
}

/// What is shown and stored: `postgres://user@host:port/db`, with no password, and a
/// query of the socket directory and the TLS settings when they are not the default;
/// it parses back to the same server, user, database and TLS.
impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.write_str("postgres://")?;
        if let Some(user) = c.get_user() {
            write!(f, "{}@", encode(user))?;
        }
        let ports = c.get_ports();
        let mut sockets = Vec::new();
        let mut first = true;
        for (i, host) in c.get_hosts().iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match host {
                Host::Tcp(name) => {
                    if !first {
                        f.write_str(",")?;
                    }
                    first = false;
                    if name.contains(':') {
                        write!(f, "[{name}]:{port}")?;
                    } else {
                        write!(f, "{name}:{port}")?;
                    }
                }
                Host::Unix(path) => sockets.push((path.display().to_string(), port)),
            }
        }
        write!(f, "/{}", encode(c.get_dbname().unwrap_or("")))?;
        let mut query = url::form_urlencoded::Serializer::new(String::new());
        if let Some((socket, port)) = sockets.first() {
            query.append_pair("host", socket);
            query.append_pair("port", &port.to_string());
        }
        if let Some(mode) = self.mode.as_deref().filter(|m| *m != "prefer") {
            query.append_pair("sslmode", mode);
        }
        if let Some(root) = &self.root {
            query.append_pair("sslrootcert", root);
        }
        let query = query.finish();
        if !query.is_empty() {
            write!(f, "?{query}")?;
        }
        Ok(())
    }
}

/// `s` percent-encoded but for URL-safe characters, for a user or database name.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

/// `s` with what may be a password hidden, for a message about a value that could not
/// be parsed: a URL's `user:password@` part up to its last '@' (a password may hold '/',
/// '?' or '@'), and any `password=...` (a URL's query, a key=value string).
pub fn redact_text(s: &str) -> String {
    let mut out = match s.split_once("://") {
        Some((scheme, rest)) => match rest.rfind('@') {
            Some(at) => {
                let userinfo = &rest[..at];
                let shown = match userinfo.split_once(':') {
                    Some((user, _)) => format!("{user}:***"),
                    None => userinfo.to_owned(),
                };
                format!("{scheme}://{shown}{}", &rest[at..])
            }
            None => s.to_owned(),
        },
        None => s.to_owned(),
    };
    let lower = out.to_ascii_lowercase();
    if let Some(at) = lower.find("password") {
        let rest = &out[at..];
        let value_end = rest
            .find(['&', ' ', '\t', '\n'])
            .map_or(out.len(), |e| at + e);
        out.replace_range(at..value_end, "password=***");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str, env: &[(&str, &str)]) -> PgUrl {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        url.parse::<PgUrl>()
            .unwrap()
            .with_env(move |name| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()))
            .unwrap()
    }

    #[test]
    fn the_environment_completes_tls_as_libpq_does_and_a_bad_mode_is_refused() {
        // PGSSLROOTCERT applies to the URL's own sslmode.
        let url = parse(
            "postgres://u@h/db?sslmode=require",
            &[("PGSSLROOTCERT", "/ca.pem")],
        );
        assert_eq!(url.tls, Tls::Verified(Some("/ca.pem".into())));
        // The URL's mode wins over PGSSLMODE.
        let url = parse(
            "postgres://u@h/db?sslmode=prefer",
            &[("PGSSLMODE", "disable")],
        );
        assert_eq!(url.tls, Tls::Offered);
        // A PGSSLMODE that is no mode is an error, not the default.
        let err = "postgres://u@h/db"
            .parse::<PgUrl>()
            .unwrap()
            .with_env(|name| (name == "PGSSLMODE").then(|| "verify_full".to_owned()))
            .unwrap_err();
        assert!(err.to_string().contains("verify_full"), "{err}");
        // The stored form keeps TLS, and parses back to the same.
        let url = parse(
            "postgres://we%3Fird%40x@h/d%2Fb?sslmode=verify-full&sslrootcert=/etc/ca.pem",
            &[],
        );
        let shown = url.to_string();
        assert_eq!(
            shown,
            "postgres://we%3Fird%40x@h:5432/d%2Fb?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem"
        );
        let back = parse(&shown, &[]);
        assert_eq!(back.to_string(), shown);
        assert_eq!(back.tls, url.tls);
        assert_eq!(back.config.get_user(), Some("we?ird@x"));
        assert_eq!(back.config.get_dbname(), Some("d/b"));
    }

    #[test]
    fn passwords_never_show_in_a_message_about_a_bad_value() {
        for bad in [
            "postgres://u:S3CR/ETpw@127.0.0.1:55432/rv1?bogus=1",
            "postgres://u:S3CR?ETpw@h/db?bogus=1",
            "postgres://u:S3CR@ETpw@127.0.0.1:55432/rv1",
            "postgres://u@h/db?password=S3CRETpw&bogus=1",
            "Postgres://u:S3CRETpw@h/db",
            "host=h password=S3CRETpw dbname=x",
        ] {
            let shown = redact_text(bad);
            assert!(
                !shown.contains("S3CR") && !shown.contains("ETpw"),
                "{shown}"
            );
            if let Err(e) = bad.parse::<PgUrl>() {
                assert!(!e.to_string().contains("ETpw"), "{e}");
            }
        }
        let err = "postgres://u:S3CR@ETpw@h/db".parse::<PgUrl>().unwrap_err();
        assert!(err.to_string().contains("%40"), "{err}");
    }

    #[test]
    fn the_shown_form_never_holds_the_password() {
        let url = parse(
            "postgresql://sync:s3cret@db.internal:6432/crm?sslmode=require",
            &[],
        );
        assert_eq!(
            url.to_string(),
            "postgres://sync@db.internal:6432/crm?sslmode=require"
        );
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.config.get_password(), Some(&b"s3cret"[..]));
        assert_eq!(url.tls, Tls::Unchecked);
        assert_eq!(
            redact_text("postgres://u:pw@h/db?x=1"),
            "postgres://u:***@h/db?x=1"
        );
        assert_eq!(redact_text("postgres://h/db"), "postgres://h/db");
        let bad = "postgres://u:pw@h/db?nonsense=1"
            .parse::<PgUrl>()
            .unwrap_err();
        assert!(!bad.to_string().contains("pw@"), "{bad}");
    }

    #[test]
    fn what_the_url_leaves_out_comes_from_the_environment() {
        let env = [
            ("PGHOST", "/run/postgresql"),
            ("PGPORT", "5433"),
            ("PGUSER", "etl"),
            ("PGPASSWORD", "from-env"),
            ("PGDATABASE", "warehouse"),
            ("PGSSLMODE", "disable"),
        ];
        let url = parse("postgres://", &env);
        assert_eq!(
            url.to_string(),
            "postgres://etl@/warehouse?host=%2Frun%2Fpostgresql&port=5433&sslmode=disable"
        );
        assert_eq!(url.config.get_password(), Some(&b"from-env"[..]));
        assert_eq!(url.tls, Tls::Off);
        // The URL wins over the environment.
        let url = parse("postgres://me:pw@h/db?sslmode=verify-full", &env);
        assert_eq!(
            url.to_string(),
            "postgres://me@h:5433/db?sslmode=verify-full"
        );
        assert_eq!(url.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(url.tls, Tls::Verified(None));
        assert_eq!(
            url.config.get_connect_timeout(),
            Some(&Duration::from_secs(10))
        );
        let url = parse("postgres://me@h:6000,[::1]:6001/db", &env);
        assert_eq!(
            url.to_string(),
            "postgres://me@h:6000,[::1]:6001/db?sslmode=disable"
        );
        let url = parse("postgres://a,b/db", &env);
        assert_eq!(
            url.to_string(),
            "postgres://etl@a:5433,b:5433/db?sslmode=disable"
        );
    }

    #[test]
    fn ssl_modes_are_libpqs() {
        let cases = [
            ("", Tls::Offered),
            ("?sslmode=disable", Tls::Off),
            ("?sslmode=prefer", Tls::Offered),
            ("?sslmode=require", Tls::Unchecked),
            (
                "?sslmode=require&sslrootcert=/ca.pem",
                Tls::Verified(Some("/ca.pem".into())),
            ),
            (
                "?sslmode=verify-ca&sslrootcert=/ca.pem",
                Tls::Verified(Some("/ca.pem".into())),
            ),
            ("?sslmode=verify-full", Tls::Verified(None)),
            (
                "?sslmode=verify-full&sslrootcert=system",
                Tls::Verified(None),
            ),
        ];
        for (query, want) in cases {
            let url = parse(&format!("postgres://h/db{query}"), &[]);
            assert_eq!(url.tls, want, "{query}");
        }
        assert!("postgres://h/db?sslmode=bogus".parse::<PgUrl>().is_err());
        assert!("mysql://h/db".parse::<PgUrl>().is_err());
    }
}
