//! Property tests of config parsing: no text makes [`Config::parse`] or [`auth::locate`]
//! panic, and every error says where: a syntax or type error carries toml's line and column, a
//! validation error names its field and, when it has a line, one that exists in the file.

use std::path::Path;

use proptest::prelude::*;

use super::*;

/// Configs that parse, as seeds for mutation.
const SEEDS: [&str; 3] = [
    include_str!("../../hsm-config/sigild.example.toml"),
    include_str!("../../hsm-config/sigild-softhsm.toml"),
    include_str!("../../hsm-config/sigild-network-hsm.toml"),
];

/// Check that `e` (from parsing `text`) says where the problem is.
fn located(e: &ConfigError, text: &str) -> Result<(), TestCaseError> {
    let lines = text.lines().count().max(1);
    match e {
        ConfigError::Parse { message, .. } => {
            // toml's messages read "TOML parse error at line L, column C"; errors about the
            // document as a whole (a missing top-level table) have no span to point at.
            let has_line = message.contains("at line ");
            let whole = message.starts_with("missing field");
            prop_assert!(has_line || whole, "no location: {}", message);
        }
        ConfigError::Located { line, field, .. } => {
            prop_assert!(!field.is_empty());
            if let Some(l) = line {
                prop_assert!((1..=lines).contains(l), "line {} of {}", l, lines);
            }
        }
        ConfigError::Several(all) => {
            prop_assert!(all.len() >= 2);
            for e in all {
                located(e, text)?;
            }
        }
        ConfigError::Invalid { field, .. } => prop_assert!(!field.is_empty()),
        ConfigError::Read { .. } => prop_assert!(false, "parse never reads files"),
    }
    Ok(())
}

#[derive(Debug, Clone)]
enum Edit {
    /// Replace the value after `=` on a line.
    Value(usize, String),
    /// Delete a line.
    Delete(usize),
    /// Repeat a line.
    Repeat(usize),
    /// Insert a line.
    Insert(usize, String),
}

fn edit() -> impl Strategy<Value = Edit> {
    let value = prop_oneof![
        Just("\"\"".to_owned()),
        Just("0".to_owned()),
        Just("-1".to_owned()),
        Just("99999999999999999999".to_owned()),
        Just("true".to_owned()),
        Just("[]".to_owned()),
        Just("[\"*\", 1]".to_owned()),
        Just("{}".to_owned()),
        Just("\"0/s\"".to_owned()),
        Just("\"pkcs11:slot-id=x\"".to_owned()),
        Just("\"127.0.0.1:99999\"".to_owned()),
        "\"[ -~]{0,12}\"",
        ".{0,12}",
    ];
    let line = prop_oneof![
        Just("[[caller]]".to_owned()),
        Just("[server]".to_owned()),
        Just("[pkcs11]".to_owned()),
        Just("[yubikey]".to_owned()),
        Just("operations = [\"raw\"]".to_owned()),
        Just("operations = [\"decrypt\"]".to_owned()),
        Just("jwe_algs = [\"RSA1_5\", \"ECDH-ES\"]".to_owned()),
        Just("jwe_encs = []".to_owned()),
        Just("[decryption]".to_owned()),
        Just("max_jwe_bytes = 0".to_owned()),
        Just("iss = []".to_owned()),
        "[a-z_]{1,10} = [0-9\"\\[\\]{}a-z]{0,8}",
        ".{0,16}",
    ];
    prop_oneof![
        (any::<usize>(), value).prop_map(|(i, v)| Edit::Value(i, v)),
        any::<usize>().prop_map(Edit::Delete),
        any::<usize>().prop_map(Edit::Repeat),
        (any::<usize>(), line).prop_map(|(i, l)| Edit::Insert(i, l)),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    for e in edits {
        let n = lines.len().max(1);
        match e {
            Edit::Value(i, v) => {
                if let Some(l) = lines.get_mut(i % n)
                    && let Some((name, _)) = l.split_once('=')
                {
                    *l = format!("{name}= {v}");
                }
            }
            Edit::Delete(i) => {
                if !lines.is_empty() {
                    lines.remove(i % n);
                }
            }
            Edit::Repeat(i) => {
                if let Some(l) = lines.get(i % n).cloned() {
                    lines.insert(i % n, l);
                }
            }
            Edit::Insert(i, l) => lines.insert(i % (lines.len() + 1), l.clone()),
        }
    }
    lines.join("\n")
}

#[test]
fn seeds_parse() -> Result<(), ConfigError> {
    for seed in SEEDS {
        Config::parse(Path::new("seed.toml"), seed)?;
    }
    Ok(())
}

proptest! {
    #[test]
    fn any_text_never_panics(text in ".{0,80}") {
        if let Err(e) = Config::parse(Path::new("x.toml"), &text) {
            located(&e, &text)?;
        }
    }

    #[test]
    fn toml_like_text_never_panics(
        text in r#"(\[server\]|\[\[caller\]\]|\[pkcs11\]|\n|[a-z_]{1,8} = |"[a-z0-9:.*]{0,8}"|[0-9]{1,4}|true|\[|\]|\{|\}|,|=|\.){0,30}"#,
    ) {
        if let Err(e) = Config::parse(Path::new("x.toml"), &text) {
            located(&e, &text)?;
        }
    }

    /// Edits of real configs: wrong values, missing, repeated and stray lines reach the
    /// validators rather than only the TOML parser.
    #[test]
    fn edited_configs_never_panic_and_errors_are_located(
        seed in 0usize..SEEDS.len(),
        edits in prop::collection::vec(edit(), 1..4),
    ) {
        let text = apply(SEEDS.get(seed).copied().unwrap_or_default(), &edits);
        if let Err(e) = Config::parse(Path::new("x.toml"), &text) {
            located(&e, &text)?;
        }
    }

    #[test]
    fn locate_never_panics(
        seed in 0usize..SEEDS.len(),
        field in r"([a-z_]{1,8}(\[[0-9]{1,2}\]?)?\.?){1,3}|.{0,12}",
    ) {
        let text = SEEDS.get(seed).copied().unwrap_or_default();
        if let Some(line) = auth::locate(text, &field) {
            prop_assert!((1..=text.lines().count()).contains(&line));
        }
    }
}
