//! The `omni` binary itself: help, version, and an error's exit code and message on a real
//! process.

use std::process::Command;

fn omni() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_omni"));
    let config = std::env::temp_dir().join(format!("omni-bin-test-{}", uuid::Uuid::now_v7()));
    command
        .env_clear()
        .env("XDG_CONFIG_HOME", config)
        .env("PATH", std::env::var("PATH").unwrap_or_default());
    command
}

#[test]
fn help_lists_every_group_and_the_exit_codes() {
    let out = omni().arg("--help").output().expect("omni runs");
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    for group in [
        "login", "customer", "catalog", "stock", "order", "crm", "kpi", "demo", "seed",
    ] {
        assert!(help.contains(group), "{group} missing from\n{help}");
    }
    assert!(help.contains("Exit codes"), "{help}");
    let version = omni().arg("--version").output().expect("omni runs");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("omni "));
}

#[test]
fn the_process_exits_with_the_errors_code() {
    let out = omni()
        .args(["order", "show", "O-2611-00001-5"])
        .output()
        .expect("omni runs");
    assert_eq!(out.status.code(), Some(3), "no token: {out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("not logged in"));

    let out = omni()
        .args(["--json", "stock", "show"])
        .output()
        .expect("omni runs");
    assert_eq!(out.status.code(), Some(2), "a SKU is required: {out:?}");
}
