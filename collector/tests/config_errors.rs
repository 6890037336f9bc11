//! A bad setting stops the collector at start with one line naming the setting and the form
//! it expects; `--check-config` validates without running.

use std::process::Command;

fn check(config: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = std::env::temp_dir().join(metricsstack_testkit::unique_name("collector-config"));
    std::fs::create_dir_all(&dir).expect("a temporary directory");
    let path = dir.join("collector.yaml");
    std::fs::write(&path, config).expect("the config is written");
    let mut command = Command::new(env!("CARGO_BIN_EXE_collector"));
    command
        .arg("--config")
        .arg(&path)
        .arg("--check-config")
        .env_remove("DATABASE_URL")
        .env("DATABASE_URL", "postgres://metrics@db.example:5432/metrics");
    for (name, value) in env {
        if value.is_empty() {
            command.env_remove(name);
        } else {
            command.env(name, value);
        }
    }
    let output = command.output().expect("the collector runs");
    std::fs::remove_dir_all(&dir).ok();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn a_valid_configuration_passes_the_check() {
    let (code, stdout, stderr) = check("intervalSeconds: 10\nprocesses: {topByCpu: 5}\n", &[]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("every 10 s"), "{stdout}");
}

#[test]
fn each_bad_setting_stops_the_collector_with_its_name() {
    type Env<'a> = &'a [(&'a str, &'a str)];
    let cases: [(&str, &str, Env, &str); 11] = [
        (
            "out of range",
            "intervalSeconds: 0\n",
            &[],
            "intervalSeconds",
        ),
        ("unknown setting", "intervalSecs: 5\n", &[], "intervalSecs"),
        ("wrong type", "batchSize: lots\n", &[], "batchSize"),
        (
            "bad pattern",
            "processes:\n  include: ['(']\n",
            &[],
            "processes.include[0]",
        ),
        (
            "bad address",
            "listenAddress: everywhere\n",
            &[],
            "listenAddress",
        ),
        (
            "min over max",
            "pool: {maxConnections: 2, minConnections: 3}\n",
            &[],
            "pool.minConnections",
        ),
        ("bad schema", "schema: Metrics\n", &[], "schema"),
        (
            "unknown command line policy",
            "processes: {commandLines: some}\n",
            &[],
            "processes.commandLines",
        ),
        (
            "bad override",
            "",
            &[("COLLECTOR_INTERVAL_SECONDS", "soon")],
            "COLLECTOR_INTERVAL_SECONDS",
        ),
        ("no database", "", &[("DATABASE_URL", "")], "DATABASE_URL"),
        (
            "bad database",
            "",
            &[("DATABASE_URL", "mysql:/nope")],
            "DATABASE_URL",
        ),
    ];
    for (what, config, env, setting) in cases {
        let (code, _, stderr) = check(config, env);
        assert_eq!(code, 2, "{what}: {stderr}");
        assert_eq!(
            stderr.trim().lines().count(),
            1,
            "{what}: one line, got {stderr:?}"
        );
        assert!(
            stderr.contains(setting),
            "{what}: {stderr:?} should name {setting}"
        );
    }
}

#[test]
fn help_documents_every_setting() {
    let output = Command::new(env!("CARGO_BIN_EXE_collector"))
        .arg("--help")
        .output()
        .expect("the collector runs");
    let help = String::from_utf8_lossy(&output.stdout);
    for (key, env, _) in metricsstack_common::config::SETTINGS {
        assert!(help.contains(key), "--help lacks {key}");
        assert!(env.is_empty() || help.contains(env), "--help lacks {env}");
    }
}
