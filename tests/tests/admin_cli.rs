//! `aggregator admin` against a real cluster with a client and an admin token: `status` and
//! `members` (table and JSON), a fourth node added as a learner, promoted and removed,
//! `snapshot`, `backup` to a file, the messages for a wrong token, a missing read token and
//! nodes that are all down, and the generated shell completions and man page.

#![allow(clippy::unwrap_used)] // A failed unwrap in a test is that test failing.

use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use tests::cluster::random_secret;
use tests::event::unique;
use tests::{binaries, event, ClusterOptions, TestCluster};

/// Runs `aggregator ARGS` with `env` (and none of the operator's own AGG_* variables), bounded.
async fn aggregator(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = tokio::process::Command::new(binaries::aggregator());
    cmd.args(args).kill_on_drop(true);
    for var in ["AGG_ADMIN_URL", "AGG_ADMIN_TOKEN", "AGG_READ_TOKEN"] {
        cmd.env_remove(var);
    }
    cmd.envs(env.iter().copied());
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .unwrap_or_else(|_| panic!("aggregator {args:?} ran over 120 s"))
        .unwrap()
}

/// Output as text, for messages.
fn text(out: &Output) -> String {
    format!(
        "exit {}\n--- stdout\n{}--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs an admin command that must succeed; returns its stdout.
async fn ok(args: &[&str]) -> String {
    let out = aggregator(args, &[]).await;
    assert!(out.status.success(), "aggregator {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_operate_a_running_cluster() {
    let (client_token, admin_token) = (random_secret(), random_secret());
    let mut options = ClusterOptions::new(3);
    options.api_token = Some(client_token.clone());
    options.extra_args = vec!["--admin-token".into(), admin_token.clone()];
    let mut cluster = TestCluster::start_with(options).await;
    let urls = [1, 2, 3].map(|id| cluster.url(id)).join(",");
    let topic = unique("admin");
    let leader = cluster.leader().await.unwrap();
    cluster
        .publish(
            leader,
            &Value::Array((0..20).map(|i| event(&topic, &format!("a-{i}"))).collect()),
        )
        .await
        .expect_ok();
    cluster
        .wait_converged(&cluster.ids(), Duration::from_secs(20))
        .await;
    let base = |cmd: &[&'static str]| -> Vec<String> {
        let mut v: Vec<String> = vec![
            "admin".into(),
            "--url".into(),
            urls.clone(),
            "--admin-token".into(),
            admin_token.clone(),
            "--read-token".into(),
            client_token.clone(),
        ];
        v.extend(cmd.iter().map(|s| s.to_string()));
        v
    };
    let run = |args: Vec<String>| async move {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        ok(&refs).await
    };

    // status: one row per node, all agreeing.
    let table = run(base(&["status"])).await;
    assert_eq!(
        table.lines().count(),
        5,
        "header, 3 rows, verdict:\n{table}"
    );
    assert!(
        table.contains("leader") && table.contains("follower"),
        "{table}"
    );
    assert!(
        table.contains("3 of 3 nodes up; all that answered agree"),
        "{table}"
    );
    let json: Value = serde_json::from_str(&run(base(&["status", "--json"])).await).unwrap();
    let rows = json.as_array().unwrap();
    assert_eq!(rows.len(), 3);
    for row in rows {
        assert_eq!(row["up"], true, "{row}");
        assert_eq!(row["stats"]["received"], 20, "{row}");
    }

    // members: the leader's view.
    let members: Value = serde_json::from_str(&run(base(&["members", "--json"])).await).unwrap();
    assert_eq!(members["voters"], serde_json::json!([1, 2, 3]), "{members}");
    assert_eq!(members["leader_id"], leader, "{members}");
    let table = run(base(&["members"])).await;
    assert!(
        table.contains("leader") && table.contains("voter"),
        "{table}"
    );

    // A fourth node: added as a learner, promoted, removed.
    let addr = cluster.start_extra(4).await;
    let mut add = base(&["add-learner", "4"]);
    add.push(addr.clone());
    let out = run(add).await;
    assert!(out.contains("learner"), "{out}");
    let view = cluster.client.cluster(&cluster.url(leader)).await.unwrap();
    assert!(view.learners.contains(&4), "{view:?}");
    run(base(&["promote", "4"])).await;
    let view = cluster.client.cluster(&cluster.url(leader)).await.unwrap();
    assert!(view.voters.contains(&4), "{view:?}");
    // The new voter holds the events written before it joined.
    cluster
        .wait_converged(&[1, 2, 3, 4], Duration::from_secs(20))
        .await;
    let out = run(base(&["remove", "4"])).await;
    assert!(out.contains("removed"), "{out}");
    let view = cluster.client.cluster(&cluster.url(leader)).await.unwrap();
    assert_eq!(view.voters, vec![1, 2, 3], "{view:?}");
    assert!(!view.learners.contains(&4), "{view:?}");
    cluster.kill(4);

    // snapshot, with the URL and the token from the environment this time.
    let out = aggregator(
        &["admin", "snapshot"],
        &[("AGG_ADMIN_URL", &urls), ("AGG_ADMIN_TOKEN", &admin_token)],
    )
    .await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("built a snapshot"),
        "{}",
        text(&out)
    );

    // backup to a file: complete, and nothing partial left beside it.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cluster.backup");
    let mut backup = base(&["backup", "--out"]);
    backup.push(file.display().to_string());
    let out = run(backup.clone()).await;
    assert!(out.contains("wrote"), "{out}");
    let bytes = std::fs::read(&file).unwrap();
    assert!(
        bytes.starts_with(raft_store::BACKUP_MAGIC),
        "not a backup file"
    );
    assert_eq!(
        std::fs::read_dir(dir.path()).unwrap().count(),
        1,
        "a file left beside it"
    );
    // An existing file is never overwritten.
    let refs: Vec<&str> = backup.iter().map(String::as_str).collect();
    let again = aggregator(&refs, &[]).await;
    assert!(
        !again.status.success() && text(&again).contains("exists"),
        "{}",
        text(&again)
    );

    // A wrong admin token: the message says which flag or variable to set.
    let out = aggregator(
        &[
            "admin",
            "--url",
            &urls,
            "--admin-token",
            "wrong",
            "snapshot",
        ],
        &[],
    )
    .await;
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("pass --admin-token or set AGG_ADMIN_TOKEN"),
        "{}",
        text(&out)
    );
    // No read token on a cluster with --api-token: it names that flag.
    let out = aggregator(&["admin", "--url", &urls, "status"], &[]).await;
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("pass --read-token or set AGG_READ_TOKEN"),
        "{}",
        text(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_node_down_names_the_urls_tried() {
    // Ports nobody listens on: a cluster started and stopped again.
    let mut cluster = TestCluster::start(1).await;
    let url = cluster.url(1);
    cluster.kill(1);
    let other = "http://127.0.0.2:9";
    let urls = format!("{url},{other}");
    for cmd in [&["members"][..], &["status"], &["promote", "2"]] {
        let mut args = vec!["admin", "--url", &urls, "--admin-token", "t"];
        args.extend_from_slice(cmd);
        let out = aggregator(&args, &[]).await;
        assert!(!out.status.success(), "{cmd:?}: {}", text(&out));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.contains("no node could answer")
                && stderr.contains(&url)
                && stderr.contains(other)
                && stderr.contains("AGG_ADMIN_URL"),
            "{cmd:?}: {}",
            text(&out)
        );
    }
}

#[tokio::test]
async fn completions_and_the_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = aggregator(&["completions", shell], &[]).await;
        assert!(out.status.success(), "{shell}: {}", text(&out));
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(
            script.contains("aggregator") && script.contains("admin"),
            "{shell}: {script}"
        );
    }
    let out = aggregator(&["man"], &[]).await;
    assert!(out.status.success(), "{}", text(&out));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(
        page.contains(".TH") && page.contains("aggregator"),
        "{page}"
    );
    let bad = aggregator(&["completions", "cmd.exe"], &[]).await;
    assert_eq!(bad.status.code(), Some(2), "{}", text(&bad));
}
