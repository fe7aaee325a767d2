//! etcd's configuration file (`--config-file`): a YAML mapping of flag names to values.
//!
//! etcd reads a member's whole configuration from this file when `--config-file` (or
//! `ETCD_CONFIG_FILE`) names one, and then ignores every other flag and environment variable.
//! Ballot does the same, so a deployment that starts etcd from a file starts Ballot from the
//! same file. The file's keys are etcd's flag names (`name`, `data-dir`,
//! `listen-client-urls`, ...); TLS settings sit in two sections as in etcd's sample file,
//! `client-transport-security` and `peer-transport-security` (`cert-file`, `key-file`,
//! `client-cert-auth`, `trusted-ca-file`, `auto-tls`, `crl-file`, `allowed-cn`,
//! `allowed-hostname`). Lists may be YAML sequences or comma-separated strings
//! (`cipher-suites: [A, B]`, `log-outputs: [stderr]`). A key left empty (`data-dir:`) keeps the
//! flag's default, as in etcd's sample, which leaves most of them empty.
//!
//! [`settings_from_yaml`] turns the file into `--flag=value` arguments that clap then parses and
//! checks exactly as it does the command line, so a value has the same meaning and the same
//! errors in both places. A key that names no Ballot setting (`enable-pprof`, `proxy`,
//! `discovery-fallback`, ...) is reported in a warning and ignored, as the `ETCD_` variables
//! for such settings are.

use std::fmt;

use yaml_rust2::{Yaml, YamlLoader};

/// The two sections of TLS settings in etcd's file format.
const CLIENT_SECTION: &str = "client-transport-security";
const PEER_SECTION: &str = "peer-transport-security";

/// What the file says, as command-line arguments for the member flags it sets.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct FileSettings {
    /// `--flag=value`, in the order of the file.
    pub args: Vec<String>,
    /// One line per key that names no Ballot setting.
    pub warnings: Vec<String>,
}

/// A file that cannot be read as a member's configuration.
#[derive(Debug, PartialEq, Eq)]
pub struct ConfigFileError(String);

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigFileError {}

/// Reads `text` (the file's contents) into arguments; `is_flag` says whether a name is one of
/// the member's flags.
pub fn settings_from_yaml(
    text: &str,
    is_flag: &dyn Fn(&str) -> bool,
) -> Result<FileSettings, ConfigFileError> {
    let documents = YamlLoader::load_from_str(text)
        .map_err(|error| ConfigFileError(format!("not valid YAML: {error}")))?;
    let mut settings = FileSettings::default();
    let root = match documents.as_slice() {
        [] | [Yaml::Null] => return Ok(settings),
        [root @ Yaml::Hash(_)] => root,
        [_] => {
            return Err(ConfigFileError(
                "expected a mapping of setting names to values (`name: infra0`)".to_string(),
            ));
        }
        _ => {
            return Err(ConfigFileError(
                "holds several YAML documents; expected one".to_string(),
            ));
        }
    };
    let mut seen: Vec<(String, String)> = Vec::new();
    for (key, value) in root.as_hash().into_iter().flatten() {
        let key = key_name(key, None)?;
        if key == CLIENT_SECTION || key == PEER_SECTION {
            match value {
                Yaml::Null => {}
                Yaml::Hash(section) => {
                    for (inner, value) in section {
                        let inner = key_name(inner, Some(&key))?;
                        let flag = section_flag(&key, &inner);
                        let place = format!("{key}.{inner}");
                        settings.add(&flag, &place, value, is_flag, &mut seen)?;
                    }
                }
                _ => {
                    return Err(ConfigFileError(format!(
                        "`{key}` must be a mapping (`cert-file: ...`, `key-file: ...`)"
                    )));
                }
            }
            continue;
        }
        settings.add(&key, &key, value, is_flag, &mut seen)?;
    }
    Ok(settings)
}

impl FileSettings {
    /// Adds the setting at `place` in the file (`data-dir`, `peer-transport-security.cert-file`)
    /// for `flag`.
    fn add(
        &mut self,
        flag: &str,
        place: &str,
        value: &Yaml,
        is_flag: &dyn Fn(&str) -> bool,
        seen: &mut Vec<(String, String)>,
    ) -> Result<(), ConfigFileError> {
        let Some(text) = value_text(place, value)? else {
            return Ok(());
        };
        if flag == "config-file" {
            self.warnings.push(format!(
                "`{place}` in a configuration file is ignored (files do not include others)"
            ));
            return Ok(());
        }
        if !is_flag(flag) {
            match crate::etcd_only::judge(&format!("`{place}`"), "setting", flag, &text) {
                Some(Ok(warning)) => self.warnings.push(warning),
                Some(Err(refusal)) => return Err(ConfigFileError(refusal)),
                None => self.warnings.push(format!(
                    "`{place}` is not a setting of Ballot (no --{flag} flag); ignored"
                )),
            }
            return Ok(());
        }
        if let Some((_, first)) = seen.iter().find(|(seen_flag, _)| seen_flag == flag) {
            return Err(ConfigFileError(format!(
                "`{place}` sets --{flag}, which `{first}` already set"
            )));
        }
        seen.push((flag.to_string(), place.to_string()));
        self.args.push(format!("--{flag}={text}"));
        Ok(())
    }
}

/// The flag a key of a TLS section stands for (`peer-transport-security.cert-file` is
/// `--peer-cert-file`).
fn section_flag(section: &str, key: &str) -> String {
    match (section, key) {
        (CLIENT_SECTION, "crl-file") => "client-crl-file".to_string(),
        (CLIENT_SECTION, "allowed-hostname") => "client-cert-allowed-hostname".to_string(),
        (CLIENT_SECTION, _) => key.to_string(),
        (_, "allowed-cn") => "peer-cert-allowed-cn".to_string(),
        (_, "allowed-hostname") => "peer-cert-allowed-hostname".to_string(),
        (_, "skip-client-san-verification") => {
            "experimental-peer-skip-client-san-verification".to_string()
        }
        (_, _) => format!("peer-{key}"),
    }
}

fn key_name(key: &Yaml, section: Option<&str>) -> Result<String, ConfigFileError> {
    match key {
        Yaml::String(name) => Ok(name.clone()),
        other => Err(ConfigFileError(format!(
            "setting names are strings; found {}{}",
            describe(other),
            section.map_or(String::new(), |section| format!(" in `{section}`"))
        ))),
    }
}

/// The text of a value as a flag takes it, or `None` for an empty one (the flag's default).
fn value_text(place: &str, value: &Yaml) -> Result<Option<String>, ConfigFileError> {
    if let Some(text) = scalar_text(value) {
        return Ok((!text.is_empty()).then_some(text));
    }
    match value {
        Yaml::Null => Ok(None),
        Yaml::Array(items) => {
            let mut texts = Vec::with_capacity(items.len());
            for item in items {
                match scalar_text(item) {
                    Some(text) => texts.push(text),
                    None => {
                        return Err(ConfigFileError(format!(
                            "`{place}` lists {}; expected plain values",
                            describe(item)
                        )));
                    }
                }
            }
            Ok((!texts.is_empty()).then(|| texts.join(",")))
        }
        other => Err(ConfigFileError(format!(
            "`{place}` is {}; expected a value or a list of values",
            describe(other)
        ))),
    }
}

fn scalar_text(value: &Yaml) -> Option<String> {
    match value {
        Yaml::String(text) | Yaml::Real(text) => Some(text.clone()),
        Yaml::Integer(number) => Some(number.to_string()),
        Yaml::Boolean(flag) => Some(flag.to_string()),
        _ => None,
    }
}

fn describe(value: &Yaml) -> &'static str {
    match value {
        Yaml::Hash(_) => "a mapping",
        Yaml::Array(_) => "a list",
        Yaml::Null => "an empty value",
        Yaml::Alias(_) => "an alias",
        Yaml::BadValue => "an unreadable value",
        _ => "a plain value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(name: &str) -> bool {
        [
            "name",
            "data-dir",
            "snapshot-count",
            "listen-client-urls",
            "cipher-suites",
            "log-outputs",
            "cert-file",
            "client-cert-auth",
            "peer-cert-file",
            "peer-client-cert-auth",
            "peer-cert-allowed-cn",
            "client-crl-file",
            "strict-reconfig-check",
        ]
        .contains(&name)
    }

    fn read(text: &str) -> Result<FileSettings, ConfigFileError> {
        settings_from_yaml(text, &flags)
    }

    #[test]
    fn keys_become_flags_and_sections_their_tls_flags() {
        let settings = read(
            "# etcd's layout\n\
             name: 'infra0'\n\
             data-dir:\n\
             snapshot-count: 10000\n\
             strict-reconfig-check: false\n\
             listen-client-urls: http://10.0.1.10:2379,http://127.0.0.1:2379\n\
             cipher-suites: [\n  TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,\n  \
               TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384\n]\n\
             log-outputs: [stderr]\n\
             client-transport-security:\n  cert-file: /etc/c.pem\n  client-cert-auth: true\n  \
               crl-file: /etc/c.crl\n  trusted-ca-file:\n\
             peer-transport-security:\n  cert-file: /etc/p.pem\n  client-cert-auth: false\n  \
               allowed-cn: member\n",
        )
        .unwrap();
        assert_eq!(
            settings.args,
            [
                "--name=infra0",
                "--snapshot-count=10000",
                "--strict-reconfig-check=false",
                "--listen-client-urls=http://10.0.1.10:2379,http://127.0.0.1:2379",
                "--cipher-suites=TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,\
                 TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384",
                "--log-outputs=stderr",
                "--cert-file=/etc/c.pem",
                "--client-cert-auth=true",
                "--client-crl-file=/etc/c.crl",
                "--peer-cert-file=/etc/p.pem",
                "--peer-client-cert-auth=false",
                "--peer-cert-allowed-cn=member",
            ]
        );
        assert!(settings.warnings.is_empty(), "{:?}", settings.warnings);
    }

    #[test]
    fn unknown_settings_are_ignored_with_a_warning() {
        let settings =
            read("name: a\nenable-pprof: true\nproxy: 'off'\npeer-transport-security:\n  auto-tls: true\ndiscovery:\nconfig-file: /x.yml\n")
                .unwrap();
        assert_eq!(settings.args, ["--name=a"]);
        assert_eq!(
            settings.warnings,
            [
                "`enable-pprof` is an etcd setting Ballot does not have; ignored (Ballot has \
                 no Go profiler; /metrics has its figures)",
                "`proxy` is an etcd setting Ballot does not have; ignored (applies only to \
                 etcd's v2 proxy mode, which is off)",
                "`peer-transport-security.auto-tls` is not a setting of Ballot (no \
                 --peer-auto-tls flag); ignored",
                "`config-file` in a configuration file is ignored (files do not include others)",
            ]
        );
    }

    #[test]
    fn etcd_settings_that_choose_the_cluster_are_refused() {
        for (text, place) in [
            ("discovery: https://discovery.etcd.io/x\n", "discovery"),
            ("discovery-srv: example.com\n", "discovery-srv"),
            ("proxy: 'on'\n", "proxy"),
        ] {
            let error = read(text).unwrap_err().to_string();
            assert!(
                error.starts_with(&format!(
                    "`{place}` is an etcd setting Ballot does not support: "
                )),
                "{error}"
            );
        }
    }

    #[test]
    fn an_empty_file_sets_nothing() {
        assert_eq!(read("").unwrap(), FileSettings::default());
        assert_eq!(read("# only a comment\n").unwrap(), FileSettings::default());
    }

    #[test]
    fn malformed_files_are_refused_with_the_reason() {
        let error = |text: &str| read(text).unwrap_err().to_string();
        assert!(error("name: [a\n").starts_with("not valid YAML: "));
        assert_eq!(
            error("- name\n- data-dir\n"),
            "expected a mapping of setting names to values (`name: infra0`)"
        );
        assert_eq!(
            error("name: {first: a}\n"),
            "`name` is a mapping; expected a value or a list of values"
        );
        assert_eq!(
            error("log-outputs: [[stderr]]\n"),
            "`log-outputs` lists a list; expected plain values"
        );
        assert_eq!(
            error("peer-transport-security: /etc/p.pem\n"),
            "`peer-transport-security` must be a mapping (`cert-file: ...`, `key-file: ...`)"
        );
        assert_eq!(
            error("peer-cert-file: /a.pem\npeer-transport-security:\n  cert-file: /b.pem\n"),
            "`peer-transport-security.cert-file` sets --peer-cert-file, which `peer-cert-file` \
             already set"
        );
        assert_eq!(
            error("1: a\n"),
            "setting names are strings; found a plain value"
        );
        assert_eq!(
            error("a: 1\n---\nb: 2\n"),
            "holds several YAML documents; expected one"
        );
    }
}
