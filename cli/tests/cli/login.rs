//! `omni login`, `whoami`, `logout`: a staff password and an API key become a cached token
//! that later commands use; bad credentials and missing tokens fail with clear messages.

use omni_proto::omni::identity::v1 as id;
use omni_proto::omni::identity::v1::principal_service_client::PrincipalServiceClient;
use omni_testkit::Shop;

use crate::support::env_for;

#[tokio::test]
async fn a_staff_login_is_cached_in_a_private_profile_and_used_by_later_commands() {
    let shop = Shop::start().await.expect("the suite starts");
    PrincipalServiceClient::new(shop.identity.admin())
        .create_staff(id::CreateStaffRequest {
            login: "clerk".into(),
            password: "correct horse battery".into(),
            display_name: "Clerk".into(),
            roles: vec![id::Role::ChannelManager as i32],
            scope: None,
        })
        .await
        .expect("staff created");
    let mut env = env_for(&shop, None);

    let out = omni_cli::run_captured(&["customer", "show", "+44 7700 900123"], &env).await;
    assert_eq!(out.code, 3, "no token yet: {out:?}");
    assert!(out.stderr.contains("not logged in"), "{}", out.stderr);

    env.set("OMNI_PASSWORD", "wrong password!!");
    let out = omni_cli::run_captured(&["login", "--user", "clerk"], &env).await;
    assert_eq!(out.code, 3, "{out:?}");
    assert!(
        out.stderr.contains("identity answered UNAUTHENTICATED"),
        "{}",
        out.stderr
    );

    env.set("OMNI_PASSWORD", "correct horse battery");
    let out = omni_cli::run_captured(&["--json", "login", "--user", "clerk"], &env).await;
    assert_eq!(out.code, 0, "{out:?}");
    let login = out.json();
    assert_eq!(login["principal"], "clerk");
    assert_eq!(login["roles"][0], "channel manager");
    let path = std::path::PathBuf::from(login["path"].as_str().expect("path"));
    assert!(path.starts_with(env.config_dir().expect("config dir")));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path)
            .expect("profile")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "the token file is private");
    }
    let saved = std::fs::read_to_string(&path).expect("profile");
    assert!(
        saved.contains(&shop.orders.url()),
        "endpoints kept: {saved}"
    );

    // The cached token is used: the channel manager may resolve customers.
    let out = omni_cli::run_captured(
        &[
            "--json",
            "customer",
            "resolve",
            "--phone",
            "+44 7700 900123",
            "--name",
            "Ada",
        ],
        &env,
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["created"], true);

    let who = omni_cli::run_captured(&["--json", "whoami"], &env).await;
    assert_eq!(who.json()["loggedIn"], true);
    assert_eq!(who.json()["endpoints"]["crm"], shop.crm.url());

    let out = omni_cli::run_captured(&["logout"], &env).await;
    assert_eq!(out.code, 0);
    assert!(!path.exists());
    let out = omni_cli::run_captured(&["customer", "show", "+44 7700 900123"], &env).await;
    assert_eq!(out.code, 3, "logged out: {out:?}");
    let _ = std::fs::remove_dir_all(env.config_dir().expect("config dir"));
}

#[tokio::test]
async fn an_api_key_logs_a_channel_app_into_its_own_profile() {
    let shop = Shop::start().await.expect("the suite starts");
    let key = PrincipalServiceClient::new(shop.identity.admin())
        .create_api_key(id::CreateApiKeyRequest {
            kind: id::PrincipalKind::ChannelApp as i32,
            name: "pos-lyon".into(),
            roles: vec![id::Role::ChannelApp as i32],
            scope: Some(id::Scope {
                channel_ids: vec!["0193f4d2-0000-7000-8000-000000000001".into()],
                store_ids: vec![],
            }),
        })
        .await
        .expect("api key")
        .into_inner()
        .api_key;
    let mut env = env_for(&shop, None);
    env.set("OMNI_API_KEY", key);
    let out = omni_cli::run_captured(&["--profile", "pos", "login", "--api-key"], &env).await;
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains("logged in as pos-lyon"),
        "{}",
        out.stdout
    );

    let out = omni_cli::run_captured(
        &[
            "--profile",
            "pos",
            "--json",
            "customer",
            "resolve",
            "--phone",
            "+44 7700 900555",
        ],
        &env,
    )
    .await;
    assert_eq!(out.code, 0, "{out:?}");
    // The default profile has no token.
    let out =
        omni_cli::run_captured(&["--json", "customer", "show", "+44 7700 900555"], &env).await;
    assert_eq!(out.code, 3);
    assert_eq!(out.json()["error"]["code"], "NOT_LOGGED_IN");
    let _ = std::fs::remove_dir_all(env.config_dir().expect("config dir"));
}

#[tokio::test]
async fn an_unreachable_service_is_reported_as_unavailable() {
    let shop = Shop::start().await.expect("the suite starts");
    let mut env = env_for(&shop, Some(&crate::support::admin_token()));
    // A port nothing listens on: bind one, then drop it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    env.set("OMNI_IDENTITY_URL", format!("http://127.0.0.1:{port}"));
    let out = omni_cli::run_captured(&["customer", "show", "+44 7700 900123"], &env).await;
    assert_eq!(out.code, 6, "{out:?}");
    assert!(
        out.stderr.contains("identity answered UNAVAILABLE"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("is identity running?"),
        "{}",
        out.stderr
    );

    let out = omni_cli::run_captured(&["customer", "frobnicate"], &env).await;
    assert_eq!(out.code, 2, "usage error: {out:?}");
}
