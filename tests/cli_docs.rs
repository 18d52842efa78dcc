//! The "add a CLI command" recipe's check (docs/ARCHITECTURE.md): every subcommand the
//! binary offers has its row in README.md's command table.

use std::process::Command;

#[test]
fn every_subcommand_is_in_the_readme_table() {
    let out = Command::new(env!("CARGO_BIN_EXE_dcfs")).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    let commands: Vec<&str> = help
        .lines()
        .skip_while(|l| !l.starts_with("Commands:"))
        .skip(1)
        .take_while(|l| !l.is_empty() && !l.starts_with("Options:"))
        .filter_map(|l| l.strip_prefix("  "))
        .filter(|l| !l.starts_with(' '))
        .filter_map(|l| l.split_whitespace().next())
        .filter(|&c| c != "help")
        .collect();
    assert!(
        commands.len() >= 10,
        "could not read the subcommands from --help: {help}"
    );
    let readme = include_str!("../README.md");
    let table: Vec<&str> = readme.lines().filter(|l| l.starts_with("| `dcfs ")).collect();
    for c in commands {
        let named = [format!("`dcfs {c} "), format!("`dcfs {c}`"), format!("/ `dcfs {c} ")];
        assert!(
            table.iter().any(|row| named.iter().any(|n| row.contains(n.as_str()))),
            "README.md's command table has no row for `dcfs {c}`"
        );
    }
}
