//! A shop under test and a small retailer seeded through the public APIs, plus a way to run
//! `omni` against it.

use omni_cli::commands::setup::{self, LocationSpec, SkuSpec};
use omni_cli::ctx::Ctx;
use omni_cli::{Captured, Env};
use omni_proto::common::ChannelKind;
use omni_proto::omni::inventory::v1::LocationKind;
use omni_runtime::auth::{Role, Scope};
use omni_testkit::Shop;

pub struct World {
    /// Kept so the services run as long as the world lives.
    pub _shop: Shop,
    pub env: Env,
    /// Location codes.
    pub warehouse: String,
    pub lyon: String,
    pub lyon_id: String,
    pub villeurbanne: String,
    /// Channel names.
    pub eshop: String,
    pub livestream: String,
    pub store_lyon: String,
    /// SKU codes.
    pub tee: String,
    pub mug: String,
    pub tee_id: String,
}

pub const TEE_PRICE: i64 = 2000;
pub const MUG_PRICE: i64 = 1000;

/// The environment `omni` runs with against `shop`: its URLs, an admin token, and a config
/// dir of its own.
pub fn env_for(shop: &Shop, token: Option<&str>) -> Env {
    let config = std::env::temp_dir().join(format!("omni-cli-test-{}", uuid::Uuid::now_v7()));
    let mut env = Env::from_vars([
        ("XDG_CONFIG_HOME", config.display().to_string()),
        ("OMNI_IDENTITY_URL", shop.identity.url()),
        ("OMNI_CATALOG_URL", shop.catalog.url()),
        ("OMNI_INVENTORY_URL", shop.inventory.url()),
        ("OMNI_ORDERS_URL", shop.orders.url()),
        ("OMNI_CRM_URL", shop.crm.url()),
        ("OMNI_PERFORMANCE_URL", shop.performance.url()),
    ]);
    if let Some(token) = token {
        env.set("OMNI_TOKEN", token);
    }
    env
}

pub fn admin_token() -> String {
    omni_testkit::token(&[Role::Admin], Scope::default())
}

impl World {
    /// The suite, with a warehouse and two pickup stores around Lyon, an e-shop, a livestream
    /// and a store channel, a tee and a mug listed everywhere and in stock.
    pub async fn start() -> World {
        let shop = Shop::start().await.expect("the suite starts");
        let env = env_for(&shop, Some(&admin_token()));
        let ctx = ctx(&env);
        let time_zone = omni_testkit::daytime_zone();
        let loc = |code: &'static str, kind, point, pickup, ships| LocationSpec {
            code,
            name: code,
            kind,
            city: "Lyon",
            point,
            pickup,
            ships,
            // A zone where it is midday now, so pickups are possible whenever tests run.
            time_zone: &time_zone,
        };
        let warehouse = setup::create_location(
            &ctx,
            loc("WH-1", LocationKind::Warehouse, (45.64, 5.11), false, true),
        )
        .await
        .expect("warehouse");
        let lyon = setup::create_location(
            &ctx,
            loc("LYS-1", LocationKind::Store, (45.764, 4.8357), true, true),
        )
        .await
        .expect("lyon");
        let villeurbanne = setup::create_location(
            &ctx,
            loc("VIL-1", LocationKind::Store, (45.77, 4.88), true, true),
        )
        .await
        .expect("villeurbanne");
        let eshop = setup::create_channel(&ctx, ChannelKind::EShop, "E-shop", None)
            .await
            .expect("e-shop");
        let livestream = setup::create_channel(&ctx, ChannelKind::Livestream, "Livestream", None)
            .await
            .expect("livestream");
        let store_lyon = setup::create_channel(&ctx, ChannelKind::Store, "Store Lyon", Some(&lyon))
            .await
            .expect("store channel");
        let category = setup::create_category(&ctx, "Apparel")
            .await
            .expect("category");
        let tee = setup::create_product(
            &ctx,
            &category.id,
            "Organic tee",
            "Maison",
            &[SkuSpec {
                code: "TEE-M".into(),
                price: TEE_PRICE,
                cost: 800,
                variant: vec![("size".into(), "M".into())],
            }],
        )
        .await
        .expect("tee");
        let mug = setup::create_product(
            &ctx,
            &category.id,
            "Stoneware mug",
            "Maison",
            &[SkuSpec {
                code: "MUG".into(),
                price: MUG_PRICE,
                cost: 300,
                variant: Vec::new(),
            }],
        )
        .await
        .expect("mug");
        let tee_id = tee.skus[0].id.clone();
        let mug_id = mug.skus[0].id.clone();
        for channel in [&eshop, &livestream, &store_lyon] {
            setup::list(&ctx, &tee_id, &channel.id, TEE_PRICE)
                .await
                .expect("listing");
            setup::list(&ctx, &mug_id, &channel.id, MUG_PRICE)
                .await
                .expect("listing");
        }
        setup::receive(
            &ctx,
            &warehouse.id,
            &[(tee_id.clone(), 10), (mug_id.clone(), 10)],
        )
        .await
        .expect("receipt");
        setup::receive(&ctx, &lyon.id, &[(tee_id.clone(), 3), (mug_id.clone(), 2)])
            .await
            .expect("receipt");
        World {
            _shop: shop,
            env,
            warehouse: warehouse.code,
            lyon: lyon.code,
            lyon_id: lyon.id,
            villeurbanne: villeurbanne.code,
            eshop: eshop.name,
            livestream: livestream.name,
            store_lyon: store_lyon.name,
            tee: "TEE-M".into(),
            mug: "MUG".into(),
            tee_id,
        }
    }

    /// Runs `omni <args>` as the admin.
    pub async fn omni(&self, args: &[&str]) -> Captured {
        omni_cli::run_captured(args, &self.env).await
    }

    /// Runs `omni --json <args>`, requires success, and returns the parsed output.
    pub async fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut all = vec!["--json"];
        all.extend_from_slice(args);
        let out = self.omni(&all).await;
        assert_eq!(
            out.code, 0,
            "omni {args:?} failed: {}{}",
            out.stdout, out.stderr
        );
        let json = out.json();
        assert!(
            !json.is_null(),
            "omni {args:?} printed no JSON: {}",
            out.stdout
        );
        json
    }

    /// Runs `omni <args>` (human output), requires success, returns standard output.
    pub async fn text(&self, args: &[&str]) -> String {
        let out = self.omni(args).await;
        assert_eq!(
            out.code, 0,
            "omni {args:?} failed: {}{}",
            out.stdout, out.stderr
        );
        out.stdout
    }
}

pub fn ctx(env: &Env) -> Ctx {
    let endpoints = omni_cli::config::Endpoints::resolve(env, &[], None, None).expect("endpoints");
    let token = env
        .get("OMNI_TOKEN")
        .map(str::to_owned)
        .ok_or_else(String::new);
    Ctx::new(endpoints, token)
}

/// Polls `check` until it holds (30 s at most): for effects that travel through events.
pub async fn eventually(mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not reached within 30 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
