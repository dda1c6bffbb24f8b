//! A server's configuration file: the engine's TOML options (see
//! [`EngineOptions`]) plus the server's own keys.
//!
//! ```toml
//! name = "orders"               # default "default"
//! runtime_dir = "/run/numaproc" # default: see numaproc::server::default_dir
//! state_dir = "/var/lib/numaproc/orders" # what outlives it (default: see default_state_dir)
//! allowed_group = "orders"      # its members may attach too (default: none)
//! strict_catalog = false        # refuse to start when a catalog library fails
//! drain_timeout_ms = 5000       # how long a stop lets calls in flight end
//! soc_kind = "forked"           # every engine option, as for Engine::start
//! ```

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::OptionsError;
use crate::options::{EngineOptions, SocKind};
use crate::server::ServerOptions;

/// The keys of a server's file that are not the engine's.
const SERVER_KEYS: &[&str] = &[
    "name",
    "runtime_dir",
    "state_dir",
    "allowed_group",
    "drain_timeout_ms",
    "strict_catalog",
];

/// What `numaproc serve` runs: an engine and where it is served.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The engine's options (forked SOCs unless the file says otherwise).
    pub engine: EngineOptions,
    /// The server's name and runtime directory.
    pub server: ServerOptions,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            engine: EngineOptions::default().soc_kind(SocKind::Forked),
            server: ServerOptions::new("default"),
        }
    }
}

impl ServerConfig {
    /// Reads a configuration from TOML text: the server's keys (`name`,
    /// `runtime_dir`, `state_dir`, `allowed_group`, `strict_catalog`,
    /// `drain_timeout_ms`, the same as the engine's `shutdown_timeout_ms`)
    /// and every engine option; any other key is
    /// refused, naming it.
    pub fn from_toml(text: &str) -> Result<Self, OptionsError> {
        let bad = |m: String| OptionsError::Toml(m);
        let mut table: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let mut server = ServerOptions::new("default");
        if let Some(v) = table.remove("name") {
            server.name = v
                .as_str()
                .ok_or_else(|| bad(format!("name must be a string, not {v}")))?
                .to_owned();
        }
        if let Some(v) = table.remove("runtime_dir") {
            let dir = v
                .as_str()
                .ok_or_else(|| bad(format!("runtime_dir must be a string, not {v}")))?;
            server.dir = Some(PathBuf::from(dir));
        }
        if let Some(v) = table.remove("state_dir") {
            let dir = v
                .as_str()
                .ok_or_else(|| bad(format!("state_dir must be a string, not {v}")))?;
            server.state_dir = Some(PathBuf::from(dir));
        }
        if let Some(v) = table.remove("allowed_group") {
            server.allowed_group = Some(match &v {
                toml::Value::String(name) => name.clone(),
                toml::Value::Integer(gid) if u32::try_from(*gid).is_ok() => gid.to_string(),
                _ => {
                    return Err(bad(format!(
                        "allowed_group must be a group name or gid, not {v}"
                    )));
                }
            });
        }
        if let Some(v) = table.remove("strict_catalog") {
            server.strict_catalog = v
                .as_bool()
                .ok_or_else(|| bad(format!("strict_catalog must be true or false, not {v}")))?;
        }
        let drain = match table.remove("drain_timeout_ms") {
            Some(v) => Some(
                v.as_integer()
                    .and_then(|ms| u64::try_from(ms).ok())
                    .ok_or_else(|| {
                        bad(format!(
                            "drain_timeout_ms must be a number of milliseconds, not {v}"
                        ))
                    })?,
            ),
            None => None,
        };
        if drain.is_some() && table.contains_key("shutdown_timeout_ms") {
            return Err(bad(
                "drain_timeout_ms and shutdown_timeout_ms are the same setting: give one"
                    .to_owned(),
            ));
        }
        if !table.contains_key("soc_kind") {
            table.insert("soc_kind".to_owned(), "forked".into());
        }
        let engine_text = toml::to_string(&table).map_err(|e| bad(e.to_string()))?;
        let mut engine = EngineOptions::from_toml(&engine_text)?;
        if let Some(ms) = drain {
            engine = engine.shutdown_timeout(Duration::from_millis(ms));
        }
        Ok(Self { engine, server })
    }

    /// Reads a configuration file (errors name it).
    pub fn from_toml_file(path: impl AsRef<Path>) -> Result<Self, OptionsError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path)
            .map_err(|e| OptionsError::Toml(format!("{}: {e}", path.display())))?;
        Self::from_toml(&text).map_err(|e| OptionsError::Toml(format!("{}: {e}", path.display())))
    }

    /// The keys a server's file takes besides the engine's.
    pub fn server_keys() -> &'static [&'static str] {
        SERVER_KEYS
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_keys_are_taken_out_and_the_rest_is_the_engines() {
        let c = ServerConfig::from_toml(
            "name = \"orders\"\nruntime_dir = \"/tmp/x\"\ndrain_timeout_ms = 1500\nsocs = 2\nallowed_group = 42\nstate_dir = \"/tmp/s\"\nstrict_catalog = true\n",
        )
        .unwrap();
        assert_eq!(c.server.name, "orders");
        assert_eq!(c.server.dir.as_deref(), Some(Path::new("/tmp/x")));
        assert_eq!(c.engine.socs, Some(2));
        assert_eq!(c.server.allowed_group.as_deref(), Some("42"));
        assert_eq!(c.server.state_dir.as_deref(), Some(Path::new("/tmp/s")));
        assert!(c.server.strict_catalog);
        assert_eq!(c.engine.soc_kind, SocKind::Forked);
        assert_eq!(c.engine.timeouts().shutdown, Duration::from_millis(1500));
        let spawned = ServerConfig::from_toml("soc_kind = \"spawned\"").unwrap();
        assert_eq!(spawned.engine.soc_kind, SocKind::Spawned);
        assert_eq!(spawned.server.name, "default");
    }

    #[test]
    fn bad_keys_and_values_are_named() {
        for (text, needle) in [
            ("nmae = \"x\"", "nmae"),
            ("name = 3", "name must be a string"),
            ("runtime_dir = false", "runtime_dir must be a string"),
            ("allowed_group = -3", "allowed_group must be"),
            ("state_dir = 1", "state_dir must be a string"),
            ("strict_catalog = 1", "strict_catalog must be true or false"),
            ("drain_timeout_ms = -1", "drain_timeout_ms"),
            (
                "drain_timeout_ms = 1\nshutdown_timeout_ms = 2",
                "the same setting",
            ),
            ("name = ", "TOML"),
        ] {
            let e = ServerConfig::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
