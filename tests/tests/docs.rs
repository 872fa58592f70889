//! The documentation agrees with the binaries: the README's configuration table lists exactly
//! the environment variables each binary accepts, with the defaults its `--help` shows.

use std::{
    collections::{BTreeMap, BTreeSet},
    process::Command,
};

use e2e::harness::bin;

/// env var -> default (None when unset), from a binary's --help.
fn help_env(binary: &str) -> BTreeMap<String, Option<String>> {
    let out = Command::new(bin(binary)).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut vars = BTreeMap::new();
    for line in help.lines() {
        let Some(rest) = line.split("[env: ").nth(1) else {
            continue;
        };
        let name = rest.split(['=', ']']).next().unwrap().to_string();
        let default = line
            .split("[default: ")
            .nth(1)
            .and_then(|d| d.split(']').next())
            .map(|d| d.trim_matches('"').to_string());
        vars.insert(name, default);
    }
    vars
}

#[test]
fn readme_config_table_matches_every_binary() {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let table = readme
        .split("<!-- config-table:start -->")
        .nth(1)
        .and_then(|t| t.split("<!-- config-table:end -->").next())
        .expect("README has the configuration table markers");
    // (variable, binaries, default) from the table.
    let mut rows = BTreeMap::new();
    for line in table.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let var = cells[1].trim_matches('`').to_string();
        let bins: BTreeSet<String> = cells[2].split(',').map(|b| b.trim().to_string()).collect();
        let default =
            (cells[3] != "unset").then(|| cells[3].trim_matches('`').trim_matches('"').to_string());
        rows.insert(var, (bins, default));
    }
    for (binary, short) in [
        ("provider-service", "provider"),
        ("consumer-service", "consumer"),
        ("sample-exchange", "sample-exchange"),
    ] {
        let vars = help_env(binary);
        assert!(!vars.is_empty(), "{binary} --help lists no variables");
        for (var, default) in &vars {
            let (bins, documented) = rows
                .get(var)
                .unwrap_or_else(|| panic!("README table lacks {var} of {binary}"));
            assert!(
                bins.contains(short),
                "README says {var} is not used by {short}"
            );
            assert_eq!(
                documented, default,
                "README default of {var} differs from {binary} --help"
            );
        }
        for (var, (bins, _)) in &rows {
            if bins.contains(short) {
                assert!(
                    vars.contains_key(var),
                    "README lists {var} for {short}, but {binary} does not accept it"
                );
            }
        }
    }
}
