//! identity through its gRPC contract, on real Postgres and Redis, started by the testkit.

use std::collections::HashSet;

use omni_proto::common::ChannelKind;
use omni_proto::identity as pb;
use omni_proto::identity::auth_service_client::AuthServiceClient;
use omni_proto::identity::identity_service_client::IdentityServiceClient;
use omni_proto::identity::principal_service_client::PrincipalServiceClient;
use omni_runtime::auth::{Role, Scope};
use omni_runtime::client::AuthChannel;
use omni_testkit::Service;
use sqlx::PgPool;
use tonic::Code;
use tonic_types::StatusExt as _;

type Identity = IdentityServiceClient<AuthChannel>;

fn account(kind: ChannelKind, id: &str) -> Option<pb::ChannelAccountRef> {
    Some(pb::ChannelAccountRef {
        channel_kind: kind as i32,
        external_id: id.to_owned(),
    })
}

fn by_phone(phone: &str) -> pb::ResolveCustomerRequest {
    pb::ResolveCustomerRequest {
        phone: phone.to_owned(),
        ..Default::default()
    }
}

async fn resolve(
    client: &mut Identity,
    req: pb::ResolveCustomerRequest,
) -> pb::ResolveCustomerResponse {
    client
        .resolve_customer(req)
        .await
        .expect("resolve")
        .into_inner()
}

async fn get(
    client: &mut Identity,
    key: pb::customer_key::Key,
) -> Result<pb::GetCustomerResponse, tonic::Status> {
    client
        .get_customer(pb::GetCustomerRequest {
            key: Some(pb::CustomerKey { key: Some(key) }),
        })
        .await
        .map(tonic::Response::into_inner)
}

fn fields(status: &tonic::Status) -> Vec<String> {
    status
        .get_error_details()
        .bad_request()
        .map(|b| b.field_violations.iter().map(|f| f.field.clone()).collect())
        .unwrap_or_default()
}

async fn count(db: &PgPool, sql: &'static str) -> i64 {
    sqlx::query_scalar(sql).fetch_one(db).await.expect("count")
}

async fn events_of_type(db: &PgPool, event_type: &str) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM outbox WHERE event_type = $1")
        .bind(event_type)
        .fetch_one(db)
        .await
        .expect("count events")
}

async fn start() -> (Service, Identity, PgPool) {
    let svc = omni_testkit::identity().await.expect("identity starts");
    let client = IdentityServiceClient::new(svc.admin());
    let db = svc.db().await.expect("db");
    (svc, client, db)
}

#[tokio::test]
async fn a_customer_is_found_by_every_key() {
    let (_svc, mut client, _db) = start().await;
    let created = resolve(
        &mut client,
        pb::ResolveCustomerRequest {
            channel_account: account(ChannelKind::EShop, "web-1001"),
            phone: "+44 7700 900123".into(),
            name: "Mei Lin".into(),
            email: "mei@example.com".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(created.created && created.linked);
    let customer = created.customer.expect("customer");
    assert_eq!(customer.phone, "+447700900123");
    assert_eq!(customer.member_number.len(), 10);

    use pb::customer_key::Key;
    for key in [
        Key::Id(customer.id.clone()),
        Key::MemberNumber(customer.member_number.clone()),
        Key::Phone("07700 900123".into()),
        Key::ChannelAccount(pb::ChannelAccountRef {
            channel_kind: ChannelKind::EShop as i32,
            external_id: "web-1001".into(),
        }),
    ] {
        let found = get(&mut client, key.clone()).await.expect("found");
        assert_eq!(found.customer.expect("customer").id, customer.id, "{key:?}");
        assert!(found.alias_of.is_empty());
    }

    // A store recognises her by phone and links its loyalty card.
    let again = resolve(
        &mut client,
        pb::ResolveCustomerRequest {
            channel_account: account(ChannelKind::Store, "card-77"),
            phone: "07700900123".into(),
            ..Default::default()
        },
    )
    .await;
    assert!(!again.created && again.linked);
    let again = again.customer.expect("customer");
    assert_eq!(again.id, customer.id);
    assert_eq!(again.channel_accounts.len(), 2);
}

#[tokio::test]
async fn fifty_concurrent_resolves_of_one_phone_make_one_customer() {
    let (_svc, client, db) = start().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut client = client.clone();
        tasks.push(tokio::spawn(async move {
            let req = pb::ResolveCustomerRequest {
                phone: "+44 7700 900555".into(),
                // Half of them also bring their own channel account.
                channel_account: if i % 2 == 0 {
                    account(ChannelKind::Social, &format!("social-{i}"))
                } else {
                    None
                },
                ..Default::default()
            };
            client.resolve_customer(req).await.map(|r| r.into_inner())
        }));
    }
    let mut ids = HashSet::new();
    let mut created = 0;
    for task in tasks {
        let response = task.await.expect("join").expect("resolve succeeds");
        created += usize::from(response.created);
        ids.insert(response.customer.expect("customer").id);
    }
    assert_eq!(ids.len(), 1, "all resolves name the same customer");
    assert_eq!(created, 1);
    assert_eq!(count(&db, "SELECT count(*) FROM customers").await, 1);
    assert_eq!(
        count(&db, "SELECT count(*) FROM channel_accounts").await,
        25
    );
    assert_eq!(events_of_type(&db, "identity.customer_registered").await, 1);
}

#[tokio::test]
async fn keys_naming_different_customers_are_refused_and_nothing_is_written() {
    let (_svc, mut client, db) = start().await;
    resolve(&mut client, by_phone("+447700900001")).await;
    resolve(
        &mut client,
        pb::ResolveCustomerRequest {
            channel_account: account(ChannelKind::Livestream, "ls-9"),
            ..Default::default()
        },
    )
    .await;
    let err = client
        .resolve_customer(pb::ResolveCustomerRequest {
            phone: "+447700900001".into(),
            channel_account: account(ChannelKind::Livestream, "ls-9"),
            ..Default::default()
        })
        .await
        .expect_err("conflict");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let details = err.get_error_details();
    let violations = &details.precondition_failure().expect("details").violations;
    assert_eq!(violations.len(), 2);
    assert_eq!(count(&db, "SELECT count(*) FROM customers").await, 2);
    assert_eq!(count(&db, "SELECT count(*) FROM channel_accounts").await, 1);
}

#[tokio::test]
async fn bad_input_gets_field_details_and_writes_nothing() {
    let (_svc, mut client, db) = start().await;
    let cases: Vec<(pb::ResolveCustomerRequest, Code, &str)> = vec![
        (by_phone("+44 77x0"), Code::InvalidArgument, "phone"),
        (by_phone("12"), Code::InvalidArgument, "phone"),
        (
            pb::ResolveCustomerRequest {
                phone: "+447700900123".into(),
                name: "   ".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "name",
        ),
        (
            pb::ResolveCustomerRequest {
                phone: "+447700900123".into(),
                email: "not-an-email".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "email",
        ),
        (
            pb::ResolveCustomerRequest {
                member_number: "1000000019".into(),
                ..Default::default()
            },
            Code::InvalidArgument,
            "member_number",
        ),
        (
            pb::ResolveCustomerRequest::default(),
            Code::InvalidArgument,
            "channel_account",
        ),
        (
            pb::ResolveCustomerRequest {
                channel_account: Some(pb::ChannelAccountRef {
                    channel_kind: 0,
                    external_id: "x".into(),
                }),
                ..Default::default()
            },
            Code::InvalidArgument,
            "channel_account.channel_kind",
        ),
        (
            pb::ResolveCustomerRequest {
                channel_account: account(ChannelKind::Social, ""),
                ..Default::default()
            },
            Code::InvalidArgument,
            "channel_account.external_id",
        ),
    ];
    for (req, code, field) in cases {
        let err = client
            .resolve_customer(req.clone())
            .await
            .expect_err("refused");
        assert_eq!(err.code(), code, "{req:?}: {err:?}");
        assert!(
            fields(&err).iter().any(|f| f == field),
            "{req:?} should name {field}: {err:?}"
        );
    }

    // A member number with a valid check digit that nobody has.
    let unknown = omni_testkit_member_number(123_456_789);
    let err = client
        .resolve_customer(pb::ResolveCustomerRequest {
            member_number: unknown.clone(),
            phone: "+447700900123".into(),
            ..Default::default()
        })
        .await
        .expect_err("unknown member");
    assert_eq!(err.code(), Code::NotFound);

    use pb::customer_key::Key;
    let err = get(&mut client, Key::Id("not-a-uuid".into()))
        .await
        .expect_err("bad id");
    assert_eq!(fields(&err), ["key.id"]);
    let err = get(&mut client, Key::Id(uuid::Uuid::now_v7().to_string()))
        .await
        .expect_err("unknown id");
    assert_eq!(err.code(), Code::NotFound);
    let err = get(&mut client, Key::MemberNumber(unknown))
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .get_customer(pb::GetCustomerRequest { key: None })
        .await
        .expect_err("no key");
    assert_eq!(fields(&err), ["key"]);

    assert_eq!(count(&db, "SELECT count(*) FROM customers").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM channel_accounts").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM outbox").await, 0);
}

fn omni_testkit_member_number(n: i64) -> String {
    identity::domain::MemberNumber::from_sequence(n)
        .as_str()
        .to_owned()
}

#[tokio::test]
async fn a_merge_moves_accounts_and_the_old_id_answers_as_an_alias() {
    let (_svc, mut client, db) = start().await;
    let survivor = resolve(
        &mut client,
        pb::ResolveCustomerRequest {
            phone: "+447700900101".into(),
            channel_account: account(ChannelKind::EShop, "web-1"),
            name: "Mei Lin".into(),
            ..Default::default()
        },
    )
    .await
    .customer
    .expect("survivor");
    let duplicate = resolve(
        &mut client,
        pb::ResolveCustomerRequest {
            phone: "+447700900202".into(),
            channel_account: account(ChannelKind::Store, "card-1"),
            email: "mei@example.com".into(),
            ..Default::default()
        },
    )
    .await
    .customer
    .expect("duplicate");

    let merged = client
        .merge_customers(pb::MergeCustomersRequest {
            survivor_id: survivor.id.clone(),
            duplicate_id: duplicate.id.clone(),
            reason: "same person, two phones".into(),
        })
        .await
        .expect("merge")
        .into_inner()
        .survivor
        .expect("survivor");
    assert_eq!(merged.id, survivor.id);
    assert_eq!(merged.channel_accounts.len(), 2);
    assert_eq!(
        merged.email, "mei@example.com",
        "the survivor takes over what it lacked"
    );

    use pb::customer_key::Key;
    let via_alias = get(&mut client, Key::Id(duplicate.id.clone()))
        .await
        .expect("alias");
    assert_eq!(via_alias.customer.expect("c").id, survivor.id);
    assert_eq!(via_alias.alias_of, duplicate.id);
    for key in [
        Key::MemberNumber(duplicate.member_number.clone()),
        Key::Phone("+447700900202".into()),
        Key::ChannelAccount(pb::ChannelAccountRef {
            channel_kind: ChannelKind::Store as i32,
            external_id: "card-1".into(),
        }),
    ] {
        let found = get(&mut client, key.clone()).await.expect("found");
        assert_eq!(found.customer.expect("c").id, survivor.id, "{key:?}");
    }
    // Resolving by the duplicate's phone finds the survivor, not a new customer.
    let again = resolve(&mut client, by_phone("+447700900202")).await;
    assert!(!again.created);
    assert_eq!(again.customer.expect("c").id, survivor.id);
    assert_eq!(events_of_type(&db, "identity.customer_merged").await, 1);

    // Refusals: merging into itself, merging the merged-away id again, unknown ids.
    let err = client
        .merge_customers(pb::MergeCustomersRequest {
            survivor_id: survivor.id.clone(),
            duplicate_id: survivor.id.clone(),
            reason: "oops".into(),
        })
        .await
        .expect_err("self merge");
    assert_eq!(fields(&err), ["duplicate_id"]);
    let err = client
        .merge_customers(pb::MergeCustomersRequest {
            survivor_id: survivor.id.clone(),
            duplicate_id: duplicate.id.clone(),
            reason: "again".into(),
        })
        .await
        .expect_err("merged twice");
    assert_eq!(err.code(), Code::FailedPrecondition);
    let err = client
        .merge_customers(pb::MergeCustomersRequest {
            survivor_id: survivor.id.clone(),
            duplicate_id: uuid::Uuid::now_v7().to_string(),
            reason: "ghost".into(),
        })
        .await
        .expect_err("unknown");
    assert_eq!(err.code(), Code::NotFound);
    let err = client
        .merge_customers(pb::MergeCustomersRequest {
            survivor_id: survivor.id.clone(),
            duplicate_id: "x".into(),
            reason: String::new(),
        })
        .await
        .expect_err("bad input");
    assert_eq!(fields(&err), ["duplicate_id", "reason"]);
    assert_eq!(events_of_type(&db, "identity.customer_merged").await, 1);
}

#[tokio::test]
async fn erasing_removes_personal_data_but_keeps_the_id() {
    let (svc, mut client, db) = start().await;
    let customer = resolve(
        &mut client,
        pb::ResolveCustomerRequest {
            phone: "+447700900303".into(),
            channel_account: account(ChannelKind::Social, "insta-mei"),
            name: "Mei Lin".into(),
            email: "mei@example.com".into(),
            ..Default::default()
        },
    )
    .await
    .customer
    .expect("customer");

    let mut analyst = IdentityServiceClient::new(svc.as_roles(&[Role::Analyst]));
    let err = analyst
        .erase_customer(pb::EraseCustomerRequest {
            customer_id: customer.id.clone(),
            reason: "request".into(),
        })
        .await
        .expect_err("analysts cannot erase");
    assert_eq!(err.code(), Code::PermissionDenied);

    let erased = client
        .erase_customer(pb::EraseCustomerRequest {
            customer_id: customer.id.clone(),
            reason: "customer request".into(),
        })
        .await
        .expect("erase")
        .into_inner()
        .customer
        .expect("customer");
    assert!(erased.erased);
    assert_eq!(erased.id, customer.id);
    assert_eq!(erased.member_number, customer.member_number);
    assert!(erased.phone.is_empty() && erased.email.is_empty() && erased.name.is_empty());
    assert!(erased.channel_accounts.is_empty());

    use pb::customer_key::Key;
    let still = get(&mut client, Key::Id(customer.id.clone()))
        .await
        .expect("id answers");
    assert!(still.customer.expect("c").erased);
    let err = get(&mut client, Key::Phone("+447700900303".into()))
        .await
        .expect_err("gone");
    assert_eq!(err.code(), Code::NotFound);
    let stored: (Option<String>, Option<String>, String) =
        sqlx::query_as("SELECT phone, email, name FROM customers WHERE id = $1::uuid")
            .bind(&customer.id)
            .fetch_one(&db)
            .await
            .expect("row");
    assert_eq!(stored, (None, None, String::new()));

    // The same phone now belongs to nobody: a new resolve makes a new customer.
    let fresh = resolve(&mut client, by_phone("+447700900303")).await;
    assert!(fresh.created);
    assert_ne!(fresh.customer.expect("c").id, customer.id);

    // Erasing twice is harmless and says so once.
    client
        .erase_customer(pb::EraseCustomerRequest {
            customer_id: customer.id.clone(),
            reason: "again".into(),
        })
        .await
        .expect("second erase");
    assert_eq!(events_of_type(&db, "identity.customer_erased").await, 1);
}

#[tokio::test]
async fn consent_is_recorded_per_channel_kind() {
    let (_svc, mut client, db) = start().await;
    let customer = resolve(&mut client, by_phone("+447700900404"))
        .await
        .customer
        .expect("c");
    let updated = client
        .set_consent(pb::SetConsentRequest {
            customer_id: customer.id.clone(),
            channel_kind: ChannelKind::Social as i32,
            marketing_opt_in: true,
        })
        .await
        .expect("consent")
        .into_inner()
        .customer
        .expect("c");
    assert_eq!(updated.consents.len(), 1);
    assert!(updated.consents[0].marketing_opt_in);
    let updated = client
        .set_consent(pb::SetConsentRequest {
            customer_id: customer.id.clone(),
            channel_kind: ChannelKind::Social as i32,
            marketing_opt_in: false,
        })
        .await
        .expect("opt out")
        .into_inner()
        .customer
        .expect("c");
    assert!(!updated.consents[0].marketing_opt_in);
    assert_eq!(
        events_of_type(&db, "identity.customer_consent_changed").await,
        2
    );

    let err = client
        .set_consent(pb::SetConsentRequest {
            customer_id: customer.id.clone(),
            channel_kind: 0,
            marketing_opt_in: true,
        })
        .await
        .expect_err("no channel kind");
    assert_eq!(fields(&err), ["channel_kind"]);
    let err = client
        .set_consent(pb::SetConsentRequest {
            customer_id: uuid::Uuid::now_v7().to_string(),
            channel_kind: ChannelKind::Store as i32,
            marketing_opt_in: true,
        })
        .await
        .expect_err("unknown customer");
    assert_eq!(err.code(), Code::NotFound);
    assert_eq!(
        events_of_type(&db, "identity.customer_consent_changed").await,
        2
    );
}

#[tokio::test]
async fn calls_without_a_valid_token_are_unauthenticated() {
    let svc = omni_testkit::identity().await.expect("identity");
    let request = || pb::GetCustomerRequest {
        key: Some(pb::CustomerKey {
            key: Some(pb::customer_key::Key::Id(uuid::Uuid::now_v7().to_string())),
        }),
    };

    let mut anonymous = IdentityServiceClient::new(svc.channel());
    let err = anonymous
        .get_customer(request())
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut expired =
        IdentityServiceClient::new(svc.with_token(&omni_testkit::expired_token(&[Role::Admin])));
    let err = expired.get_customer(request()).await.expect_err("expired");
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("expired"));

    // Signed by a key identity never had.
    let foreign_keys = omni_runtime::auth::KeyPair::generate().expect("keys");
    let foreign = omni_runtime::auth::TokenSigner::from_private_pem(
        foreign_keys.private_pem.expose(),
        std::time::Duration::from_secs(60),
    )
    .expect("signer");
    let (forged, _) = foreign
        .sign(&omni_runtime::auth::Principal {
            id: "intruder".into(),
            kind: omni_runtime::auth::PrincipalKind::Staff,
            name: "intruder".into(),
            roles: vec![Role::Admin],
            scope: Scope::default(),
            on_behalf_of: None,
        })
        .expect("sign");
    let mut forger = IdentityServiceClient::new(svc.with_token(&forged));
    let err = forger.get_customer(request()).await.expect_err("forged");
    assert_eq!(err.code(), Code::Unauthenticated);

    let mut garbage = IdentityServiceClient::new(svc.with_token("not.a.jwt"));
    let err = garbage.get_customer(request()).await.expect_err("garbage");
    assert_eq!(err.code(), Code::Unauthenticated);

    // The principal admin API is guarded too.
    let mut principals = PrincipalServiceClient::new(svc.channel());
    let err = principals
        .disable_principal(pb::DisablePrincipalRequest {
            principal_id: uuid::Uuid::now_v7().to_string(),
        })
        .await
        .expect_err("no token");
    assert_eq!(err.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn roles_and_scopes_are_enforced() {
    let svc = omni_testkit::identity().await.expect("identity");
    let store_a = uuid::Uuid::now_v7().to_string();
    let store_b = uuid::Uuid::now_v7().to_string();

    let mut analyst = IdentityServiceClient::new(svc.as_roles(&[Role::Analyst]));
    let err = analyst
        .resolve_customer(by_phone("+447700900505"))
        .await
        .expect_err("analysts only read");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = analyst
        .merge_customers(pb::MergeCustomersRequest {
            survivor_id: uuid::Uuid::now_v7().to_string(),
            duplicate_id: uuid::Uuid::now_v7().to_string(),
            reason: "x".into(),
        })
        .await
        .expect_err("analysts cannot merge");
    assert_eq!(err.code(), Code::PermissionDenied);

    let mut associate = IdentityServiceClient::new(svc.as_roles(&[Role::StoreAssociate]));
    associate
        .resolve_customer(by_phone("+447700900505"))
        .await
        .expect("associates resolve customers at the till");

    let manager_a = svc.with_token(&omni_testkit::token(
        &[Role::ChannelManager],
        Scope {
            channels: vec![],
            stores: vec![store_a.clone()],
        },
    ));
    let mut principals = PrincipalServiceClient::new(manager_a);
    let staff = |store: &str, role: pb::Role, login: &str| pb::CreateStaffRequest {
        login: login.into(),
        password: "a long enough password".into(),
        display_name: "Sam".into(),
        roles: vec![role as i32],
        scope: Some(pb::Scope {
            channel_ids: vec![],
            store_ids: vec![store.to_owned()],
        }),
    };
    principals
        .create_staff(staff(&store_a, pb::Role::StoreAssociate, "sam.a"))
        .await
        .expect("a manager staffs its own store");
    let err = principals
        .create_staff(staff(&store_b, pb::Role::StoreAssociate, "sam.b"))
        .await
        .expect_err("another store is out of scope");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = principals
        .create_staff(staff(&store_a, pb::Role::Admin, "sam.admin"))
        .await
        .expect_err("managers cannot make admins");
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = principals
        .create_api_key(pb::CreateApiKeyRequest {
            kind: pb::PrincipalKind::Service as i32,
            name: "crm".into(),
            roles: vec![pb::Role::Service as i32],
            scope: None,
        })
        .await
        .expect_err("api keys are admin only");
    assert_eq!(err.code(), Code::PermissionDenied);
}

#[tokio::test]
async fn staff_and_services_authenticate_for_tokens_that_work() {
    let svc = omni_testkit::identity().await.expect("identity");
    let mut principals = PrincipalServiceClient::new(svc.admin());
    let mut auth = AuthServiceClient::new(svc.channel());

    let staff = principals
        .create_staff(pb::CreateStaffRequest {
            login: "Ana.Store".into(),
            password: "correct horse battery".into(),
            display_name: "Ana".into(),
            roles: vec![pb::Role::StoreAssociate as i32],
            scope: Some(pb::Scope {
                channel_ids: vec![],
                store_ids: vec![uuid::Uuid::now_v7().to_string()],
            }),
        })
        .await
        .expect("create staff")
        .into_inner()
        .principal
        .expect("principal");
    assert_eq!(staff.name, "ana.store");

    let err = principals
        .create_staff(pb::CreateStaffRequest {
            login: "ana.store".into(),
            password: "another long password".into(),
            display_name: String::new(),
            roles: vec![pb::Role::Analyst as i32],
            scope: None,
        })
        .await
        .expect_err("duplicate login");
    assert_eq!(err.code(), Code::AlreadyExists);
    assert_eq!(fields(&err), ["login"]);
    let err = principals
        .create_staff(pb::CreateStaffRequest {
            login: "x".into(),
            password: "short".into(),
            display_name: String::new(),
            roles: vec![],
            scope: Some(pb::Scope {
                channel_ids: vec!["nope".into()],
                store_ids: vec![],
            }),
        })
        .await
        .expect_err("bad staff");
    assert_eq!(
        fields(&err),
        ["login", "password", "roles", "scope.channel_ids[0]"]
    );

    let password = |login: &str, password: &str| pb::AuthenticateRequest {
        credential: Some(pb::authenticate_request::Credential::Password(
            pb::PasswordCredential {
                login: login.into(),
                password: password.into(),
            },
        )),
    };
    let session = auth
        .authenticate(password("ana.store", "correct horse battery"))
        .await
        .expect("login")
        .into_inner();
    assert_eq!(session.principal.expect("p").id, staff.id);
    let mut as_ana = IdentityServiceClient::new(svc.with_token(&session.access_token));
    as_ana
        .resolve_customer(by_phone("+447700900606"))
        .await
        .expect("her token works");

    for (login, pw) in [
        ("ana.store", "wrong password!!"),
        ("nobody", "correct horse battery"),
    ] {
        let err = auth
            .authenticate(password(login, pw))
            .await
            .expect_err("refused");
        assert_eq!(err.code(), Code::Unauthenticated);
        assert_eq!(err.message(), "invalid login or password");
    }

    let key = principals
        .create_api_key(pb::CreateApiKeyRequest {
            kind: pb::PrincipalKind::Service as i32,
            name: "order-management".into(),
            roles: vec![pb::Role::Service as i32],
            scope: None,
        })
        .await
        .expect("api key")
        .into_inner();
    let service_session = auth
        .authenticate(pb::AuthenticateRequest {
            credential: Some(pb::authenticate_request::Credential::ApiKey(
                key.api_key.clone(),
            )),
        })
        .await
        .expect("api key login")
        .into_inner();
    let principal = service_session.principal.expect("p");
    assert_eq!(principal.roles, vec![pb::Role::Service as i32]);
    let mut as_service = IdentityServiceClient::new(svc.with_token(&service_session.access_token));
    as_service
        .resolve_customer(by_phone("+447700900707"))
        .await
        .expect("the service token works");

    // A disabled principal cannot authenticate any more.
    principals
        .disable_principal(pb::DisablePrincipalRequest {
            principal_id: principal.id.clone(),
        })
        .await
        .expect("disable");
    let err = auth
        .authenticate(pb::AuthenticateRequest {
            credential: Some(pb::authenticate_request::Credential::ApiKey(key.api_key)),
        })
        .await
        .expect_err("disabled");
    assert_eq!(err.code(), Code::Unauthenticated);
    // Nor does the token it already holds: every service polls identity's deny list.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(15);
    let refused = loop {
        match as_service.resolve_customer(by_phone("+447700900707")).await {
            Err(e) => break e,
            Ok(_) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "a disabled principal's token still works"
                );
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
        }
    };
    assert_eq!(refused.code(), Code::Unauthenticated);
    assert!(refused.message().contains("revoked"), "{refused:?}");
    // Others' tokens are untouched.
    as_ana
        .resolve_customer(by_phone("+447700900606"))
        .await
        .expect("ana's token still works");
    let err = auth
        .authenticate(pb::AuthenticateRequest { credential: None })
        .await
        .expect_err("no credential");
    assert_eq!(fields(&err), ["credential"]);

    let public = auth
        .get_public_key(pb::GetPublicKeyRequest {})
        .await
        .expect("public key")
        .into_inner();
    assert_eq!(public.algorithm, "EdDSA");
    let verifier =
        omni_runtime::auth::TokenVerifier::from_public_pem(&public.public_key_pem).expect("pem");
    let verified = verifier.verify(&session.access_token).expect("verifies");
    assert_eq!(verified.roles, vec![Role::StoreAssociate]);
}

#[tokio::test]
async fn failed_sign_ins_are_throttled_per_login_and_per_peer() {
    let svc = omni_testkit::identity().await.expect("identity");
    let limits = identity::throttle::Limits::default();
    let mut principals = PrincipalServiceClient::new(svc.admin());
    let mut auth = AuthServiceClient::new(svc.channel());
    principals
        .create_staff(pb::CreateStaffRequest {
            login: "rita".into(),
            password: "correct horse battery".into(),
            display_name: "Rita".into(),
            roles: vec![pb::Role::Analyst as i32],
            scope: None,
        })
        .await
        .expect("staff");
    let key = principals
        .create_api_key(pb::CreateApiKeyRequest {
            kind: pb::PrincipalKind::Service as i32,
            name: "crm".into(),
            roles: vec![pb::Role::Service as i32],
            scope: None,
        })
        .await
        .expect("api key")
        .into_inner()
        .api_key;
    let password = |pw: &str| pb::AuthenticateRequest {
        credential: Some(pb::authenticate_request::Credential::Password(
            pb::PasswordCredential {
                login: "rita".into(),
                password: pw.into(),
            },
        )),
    };
    let api_key = |k: &str| pb::AuthenticateRequest {
        credential: Some(pb::authenticate_request::Credential::ApiKey(k.into())),
    };

    // A success clears the login's count, so only consecutive failures add up.
    for _ in 0..limits.per_login - 1 {
        let err = auth
            .authenticate(password("a wrong guess!"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    auth.authenticate(password("correct horse battery"))
        .await
        .expect("under the limit");
    for _ in 0..limits.per_login {
        let err = auth
            .authenticate(password("a wrong guess!"))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated);
    }
    let err = auth
        .authenticate(password("correct horse battery"))
        .await
        .expect_err("the login is locked for the window, even with the right password");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("this login"), "{err:?}");
    let retry = err.get_details_retry_info().expect("retry info");
    let delay = retry.retry_delay.expect("a delay");
    assert!(delay > std::time::Duration::ZERO && delay <= limits.window);

    // Other logins from the same peer still sign in, until the peer's own limit.
    auth.authenticate(api_key(&key))
        .await
        .expect("another login");
    let failed_so_far = 2 * limits.per_login - 1;
    for i in failed_so_far..limits.per_peer {
        let err = auth
            .authenticate(api_key(&format!("omni_guess{i:05}_{}", "x".repeat(32))))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::Unauthenticated, "{err:?}");
    }
    let err = auth
        .authenticate(api_key(&key))
        .await
        .expect_err("the peer is over its limit");
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().contains("this address"), "{err:?}");
}

#[tokio::test]
async fn store_associates_and_channel_apps_need_a_bounded_scope() {
    let svc = omni_testkit::identity().await.expect("identity");
    let mut principals = PrincipalServiceClient::new(svc.admin());
    let err = principals
        .create_staff(pb::CreateStaffRequest {
            login: "sam".into(),
            password: "a long enough password".into(),
            display_name: "Sam".into(),
            roles: vec![pb::Role::StoreAssociate as i32],
            scope: Some(pb::Scope {
                channel_ids: vec![uuid::Uuid::now_v7().to_string()],
                store_ids: vec![],
            }),
        })
        .await
        .expect_err("an associate of every store");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["scope.store_ids"]);
    let err = principals
        .create_api_key(pb::CreateApiKeyRequest {
            kind: pb::PrincipalKind::ChannelApp as i32,
            name: "pos".into(),
            roles: vec![pb::Role::ChannelApp as i32],
            scope: None,
        })
        .await
        .expect_err("an app of every channel");
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(fields(&err), ["scope.channel_ids"]);

    // Nothing was created: the login is still free.
    principals
        .create_staff(pb::CreateStaffRequest {
            login: "sam".into(),
            password: "a long enough password".into(),
            display_name: "Sam".into(),
            roles: vec![pb::Role::StoreAssociate as i32],
            scope: Some(pb::Scope {
                channel_ids: vec![],
                store_ids: vec![uuid::Uuid::now_v7().to_string()],
            }),
        })
        .await
        .expect("bounded to one store");
    principals
        .create_api_key(pb::CreateApiKeyRequest {
            kind: pb::PrincipalKind::ChannelApp as i32,
            name: "pos".into(),
            roles: vec![pb::Role::ChannelApp as i32],
            scope: Some(pb::Scope {
                channel_ids: vec![uuid::Uuid::now_v7().to_string()],
                store_ids: vec![],
            }),
        })
        .await
        .expect("bounded to one channel");
}
