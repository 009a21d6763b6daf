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
    #[must_use]
    pub fn with_env(mut self, env: impl Fn(&str) -> Option<String>) -> PgUrl {
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
        if self.tls == Tls::Offered
            && let Some(mode) = env("PGSSLMODE")
            && let Ok(tls) = tls_mode(&mode, env("PGSSLROOTCERT"))
        {
            self.tls = tls;
        }
        self
    }

    /// [`PgUrl::with_env`] from this process's environment.
    #[must_use]
    pub fn from_environment(self) -> PgUrl {
        self.with_env(|name| std::env::var(name).ok())
    }

    /// Connects, and drives the connection on a task of its own.
    ///
    /// # Errors
    /// When the server cannot be reached, refuses the login or the TLS handshake fails;
    /// the message names the server as [`PgUrl`]'s `Display` does, never the password.
    pub async fn connect(&self) -> Result<tokio_postgres::Client> {
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
        drop(task);
        Ok(client)
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

/// `sslmode` (with `sslrootcert`) in libpq's meaning.
fn tls_mode(mode: &str, root: Option<String>) -> Result<Tls, BadUrl> {
    let root = root
        .filter(|r| !r.is_empty() && r != "system")
        .map(PathBuf::from);
    Ok(match mode {
        "disable" => Tls::Off,
        "allow" | "prefer" => Tls::Offered,
        "require" if root.is_none() => Tls::Unchecked,
        "require" | "verify-ca" | "verify-full" => Tls::Verified(root),
        other => {
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
        let tls = match mode {
            Some(mode) => tls_mode(&mode, root)?,
            None if root.is_some() => Tls::Verified(root.map(PathBuf::from)),
            None => Tls::Offered,
        };
        let portless = (!config.get_hosts().is_empty() && !names_a_port(&url)).then_some(url);
        Ok(PgUrl {
            config,
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

/// What is shown and stored: `postgres://user@host:port/db`, with no password and no
/// query but the socket directory.
impl fmt::Display for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let c = &self.config;
        f.write_str("postgres://")?;
        if let Some(user) = c.get_user() {
            write!(f, "{user}@")?;
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
        write!(f, "/{}", c.get_dbname().unwrap_or(""))?;
        if let Some((socket, port)) = sockets.first() {
            write!(f, "?host={socket}&port={port}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PgUrl({self})")
    }
}

/// `s` with the password of a `scheme://user:password@` URL replaced by `***`, for a
/// message about a URL that could not be parsed.
pub fn redact_text(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => {
            let userinfo = &rest[..at];
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let shown = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{shown}{}", &rest[at..])
        }
        None => s.to_owned(),
    }
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
    }

    #[test]
    fn the_shown_form_never_holds_the_password() {
        let url = parse(
            "postgresql://sync:s3cret@db.internal:6432/crm?sslmode=require",
            &[],
        );
        assert_eq!(url.to_string(), "postgres://sync@db.internal:6432/crm");
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
            "postgres://etl@/warehouse?host=/run/postgresql&port=5433"
        );
        assert_eq!(url.config.get_password(), Some(&b"from-env"[..]));
        assert_eq!(url.tls, Tls::Off);
        // The URL wins over the environment.
        let url = parse("postgres://me:pw@h/db?sslmode=verify-full", &env);
        assert_eq!(url.to_string(), "postgres://me@h:5433/db");
        assert_eq!(url.config.get_password(), Some(&b"pw"[..]));
        assert_eq!(url.tls, Tls::Verified(None));
        assert_eq!(
            url.config.get_connect_timeout(),
            Some(&Duration::from_secs(10))
        );
        let url = parse("postgres://me@h:6000,[::1]:6001/db", &env);
        assert_eq!(url.to_string(), "postgres://me@h:6000,[::1]:6001/db");
        let url = parse("postgres://a,b/db", &env);
        assert_eq!(url.to_string(), "postgres://etl@a:5433,b:5433/db");
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
