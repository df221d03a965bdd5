//! Configuration: defaults, then a TOML file, then `PARLEY_*` environment variables and command-line
//! flags (clap reads both; a flag wins over its variable). One typed struct comes out, validated.

use crate::telemetry::LogFormat;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// The configuration file's shape. Unknown keys are an error, so a typo is not silently ignored.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub data_dir: Option<PathBuf>,
    pub database_url: Option<String>,
    pub master_key_file: Option<PathBuf>,
    pub public_url: Option<String>,
    pub log_format: Option<LogFormat>,
    pub trust_proxy: Option<bool>,
}

/// Values given on the command line or in the environment; each overrides the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Configuration file (TOML).
    #[arg(long, env = "PARLEY_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Directory for the SQLite database and the master key file.
    #[arg(long, env = "PARLEY_DATA_DIR", global = true)]
    pub data_dir: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://USER@HOST/DB` [default: sqlite in the data directory].
    #[arg(
        long,
        env = "PARLEY_DATABASE_URL",
        global = true,
        hide_env_values = true
    )]
    pub database_url: Option<String>,
    /// The master key file [default: DATA_DIR/master.key].
    #[arg(long, env = "PARLEY_MASTER_KEY_FILE", global = true)]
    pub master_key_file: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "PARLEY_LOG_FORMAT", global = true, value_parser = ["text", "json"])]
    pub log_format: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub data_dir: PathBuf,
    pub database_url: String,
    pub master_key_file: PathBuf,
    /// The address users reach Parley at, e.g. `https://chat.example.com`. When it is https,
    /// cookies are `__Host-` and `Secure` and HSTS is sent.
    pub public_url: Option<String>,
    pub log_format: LogFormat,
    /// Take the client IP from the last `X-Forwarded-For` hop (only behind your own proxy).
    pub trust_proxy: bool,
}

#[derive(Debug, thiserror::Error)]
#[error("configuration: {0}")]
pub struct ConfigError(pub String);

impl Config {
    /// Build the configuration from the file named in `o.config` (if any), the environment and
    /// flags. `listen` and `public_url` come from `serve`'s own flags.
    pub fn load(
        o: &Overrides,
        listen: Option<String>,
        public_url: Option<String>,
    ) -> Result<Config, ConfigError> {
        let file = match &o.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let data_dir = o
            .data_dir
            .clone()
            .or(file.data_dir)
            .unwrap_or_else(|| PathBuf::from("./parley-data"));
        let database_url = o
            .database_url
            .clone()
            .or(file.database_url)
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("parley.db").display()));
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(ConfigError(
                "database_url must start with sqlite:// or postgres://".into(),
            ));
        }
        let master_key_file = o
            .master_key_file
            .clone()
            .or(file.master_key_file)
            .unwrap_or_else(|| data_dir.join("master.key"));
        let listen_raw = listen
            .or(file.listen)
            .unwrap_or_else(|| "127.0.0.1:8080".into());
        let listen: SocketAddr = listen_raw.parse().map_err(|_| {
            ConfigError(format!(
                "listen address {listen_raw:?} is not IP:PORT, e.g. 127.0.0.1:8080"
            ))
        })?;
        let public_url = public_url
            .or(file.public_url)
            .map(|u| u.trim_end_matches('/').to_owned());
        if let Some(u) = &public_url {
            let host = u
                .strip_prefix("https://")
                .or_else(|| u.strip_prefix("http://"));
            if !host.is_some_and(|h| !h.is_empty() && !h.contains(['/', '?', '#', '@'])) {
                return Err(ConfigError(format!(
                    "public_url {u:?} must be an origin like https://chat.example.com"
                )));
            }
        }
        let log_format = match o.log_format.as_deref() {
            Some("json") => LogFormat::Json,
            Some(_) => LogFormat::Text,
            None => file.log_format.unwrap_or(LogFormat::Text),
        };
        let trust_proxy = match env("PARLEY_TRUST_PROXY") {
            Some(v) => matches!(v.as_str(), "1" | "true" | "yes"),
            None => file.trust_proxy.unwrap_or(false),
        };
        let https = public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"));
        if !listen.ip().is_loopback() && !https {
            return Err(ConfigError(format!(
                "refusing to serve plain HTTP on {listen}: listen on 127.0.0.1 behind a TLS-terminating proxy and set \
                 PARLEY_PUBLIC_URL=https://your.host (or --public-url)"
            )));
        }
        Ok(Config {
            listen,
            data_dir,
            database_url,
            master_key_file,
            public_url,
            log_format,
            trust_proxy,
        })
    }

    pub fn https(&self) -> bool {
        self.public_url
            .as_deref()
            .is_some_and(|u| u.starts_with("https://"))
    }

    pub fn uses_sqlite(&self) -> bool {
        self.database_url.starts_with("sqlite:")
    }
}

fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {}", path.display(), e.message())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_file_then_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("parley.toml");
        std::fs::write(
            &path,
            "listen = \"127.0.0.1:9000\"\ndata_dir = \"/srv/p\"\n",
        )
        .unwrap();
        let o = Overrides {
            config: Some(path.clone()),
            ..Default::default()
        };
        let c = Config::load(&o, None, None).unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.database_url, "sqlite:///srv/p/parley.db");
        assert_eq!(c.master_key_file, PathBuf::from("/srv/p/master.key"));
        let o = Overrides {
            config: Some(path.clone()),
            data_dir: Some("/x".into()),
            ..Default::default()
        };
        let c = Config::load(&o, Some("127.0.0.1:9001".into()), None).unwrap();
        assert_eq!((c.listen.port(), c.data_dir), (9001, PathBuf::from("/x")));

        std::fs::write(&path, "listne = \"x\"\n").unwrap();
        let e = Config::load(
            &Overrides {
                config: Some(path.clone()),
                ..Default::default()
            },
            None,
            None,
        )
        .unwrap_err();
        assert!(e.0.contains("unknown field"), "{}", e.0);
    }

    #[test]
    fn plain_http_only_on_loopback() {
        let o = Overrides::default();
        assert!(Config::load(&o, Some("0.0.0.0:8080".into()), None).is_err());
        assert!(
            Config::load(
                &o,
                Some("0.0.0.0:8080".into()),
                Some("https://chat.example.com".into())
            )
            .is_ok()
        );
        assert!(Config::load(&o, Some("nonsense".into()), None).is_err());
        let bad_db = Overrides {
            database_url: Some("mysql://x".into()),
            ..Default::default()
        };
        assert!(Config::load(&bad_db, None, None).is_err());
    }
}
