#![allow(clippy::expect_used, clippy::unwrap_used)]
//! The README's first command, as a newcomer runs it: central, a box and
//! the sample devices on this machine, every sample at central, the ECG
//! read at the county hospital and its report back in the clinic's folder,
//! and nothing logged as a fault on the way.

use std::process::Command;

#[test]
fn the_demo_runs_end_to_end_and_logs_no_fault() {
    // Several runs: the steps race each other (central hands the ECG on
    // after committing it, the box watches folders from its start). It
    // speaks as the box's CLI does: Chinese unless `LANG` asks for English.
    let runs = [
        (
            None,
            ["全部 6 个样例已到达中心", "秒后已到诊所的报告文件夹"],
        ),
        (
            Some("en_US.UTF-8"),
            ["All 6 samples at central", "in the clinic's folder after"],
        ),
        (
            None,
            ["全部 6 个样例已到达中心", "秒后已到诊所的报告文件夹"],
        ),
    ];
    for (run, (lang, expected)) in runs.iter().enumerate() {
        let mut command = Command::new(env!("CARGO_BIN_EXE_yilian-rig"));
        command
            .args(["demo", "--exit"])
            .env_remove("RUST_LOG")
            .env_remove("LANG");
        if let Some(lang) = lang {
            command.env("LANG", lang);
        }
        let out = command.output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        let all = format!("{stdout}\n{stderr}");
        assert!(out.status.success(), "run {run}:\n{all}");
        for text in expected {
            assert!(all.contains(text), "run {run}, no {text:?}:\n{all}");
        }
        assert!(
            !all.contains(" ERROR ") && !all.contains(" WARN "),
            "run {run} logged a fault:\n{all}"
        );
    }
}

/// A failure says, in the reader's language, what the demo was doing and
/// where, not only the system's error.
#[test]
fn a_failing_demo_says_what_it_was_doing() {
    for (lang, expected) in [
        ("zh_CN.UTF-8", "无法创建演示目录 /proc/yilian-demo"),
        (
            "en_US.UTF-8",
            "making the demo's directory /proc/yilian-demo",
        ),
    ] {
        let out = Command::new(env!("CARGO_BIN_EXE_yilian-rig"))
            .args(["demo", "--exit", "--dir", "/proc/yilian-demo"])
            .env("LANG", lang)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{stderr}");
        assert!(stderr.contains(expected), "{lang}: {stderr}");
    }
}
