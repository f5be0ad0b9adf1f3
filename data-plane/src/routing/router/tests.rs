//! Matchers and precedence, on compiled routers.

use super::*;
use vane_proto::{Format, load};

/// Compiles `routes:` YAML (no clusters needed) into one router; returns a lookup by
/// `(method, host, path?query, headers)` giving the route name.
fn router(routes_yaml: &str) -> Router {
    let config = load(routes_yaml, Format::Yaml).unwrap();
    let mut router = Router::new("web".into(), Arc::default(), None);
    for (order, r) in config.routes.iter().enumerate() {
        let m = r.r#match.clone().unwrap_or_default();
        let route = Arc::new(Route {
            name: r.name.as_str().into(),
            timeout: Duration::from_secs(1),
            forward: WeightedClusters::new(vec![]),
            conditions: Conditions::compile(&m),
            action: RouteAction::Direct(crate::routing::actions::Direct::compile(&Default::default())),
            retry: None,
            max_request_bytes: 0,
            replay_body_bytes: 0,
            request_body_timeout: Duration::from_secs(30),
            max_response_bytes: 0,
            mirror: None,
            cache: None,
            request_headers: HeaderRules::default(),
            response_headers: HeaderRules::default(),
        });
        router.add(&m, Arc::new(RouteEntry::new(route, Box::new([]), order, Default::default())));
    }
    router.finish();
    router
}

fn take(r: &Router, method: &str, host: &str, target: &str, headers: &[(&str, &str)]) -> Option<String> {
    let mut req = Request::builder().method(method).uri(target).header("host", host);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let req = req.body(()).unwrap();
    r.find(&req).map(|f| f.entry.route.name.to_string())
}

fn get(r: &Router, path: &str) -> Option<String> {
    take(r, "GET", "any.example", path, &[])
}

#[test]
fn exact_then_template_then_longest_prefix_then_regex() {
    let r = router(
        "routes:\n\
         - {name: regex, match: {regex: '/api/.*'}}\n\
         - {name: root, match: {prefix: /}}\n\
         - {name: api, match: {prefix: /api}}\n\
         - {name: api-shadowed, match: {prefix: /api}}\n\
         - {name: users, match: {template: '/api/users/{id}'}}\n\
         - {name: files, match: {template: '/files/{*rest}'}}\n\
         - {name: health, match: {exact: /api/health}}\n",
    );
    assert_eq!(get(&r, "/api/health").as_deref(), Some("health"));
    assert_eq!(get(&r, "/api/users/7").as_deref(), Some("users"));
    assert_eq!(get(&r, "/api/users/7/posts").as_deref(), Some("api"), "templates take whole segments");
    assert_eq!(get(&r, "/apix").as_deref(), Some("api"), "plain prefixes are string prefixes");
    assert_eq!(get(&r, "/files/a/b/c").as_deref(), Some("files"));
    assert_eq!(get(&r, "/other").as_deref(), Some("root"));
    assert_eq!(get(&r, "/api/health?x=1").as_deref(), Some("health"), "the query is not part of the path");
}

#[test]
fn regex_routes_apply_only_when_nothing_else_matches_and_match_whole_paths() {
    let r = router(
        "routes:\n\
         - {name: ids, match: {regex: '/item/[0-9]+'}}\n\
         - {name: items, match: {path_separated_prefix: /items}}\n",
    );
    assert_eq!(get(&r, "/item/42").as_deref(), Some("ids"));
    assert_eq!(get(&r, "/item/42x"), None, "anchored at both ends");
    assert_eq!(get(&r, "/items").as_deref(), Some("items"));
    assert_eq!(get(&r, "/items/1").as_deref(), Some("items"));
    assert_eq!(get(&r, "/itemsx"), None, "segment-aware prefix");
}

#[test]
fn exact_hosts_beat_wildcards_beat_any_host_without_fall_through() {
    let r = router(
        "routes:\n\
         - {name: any, match: {prefix: /}}\n\
         - {name: wild, match: {prefix: /, hosts: ['*.example.com']}}\n\
         - {name: deep-wild, match: {prefix: /, hosts: ['*.eu.example.com']}}\n\
         - {name: shop, match: {prefix: /cart, hosts: [shop.example.com]}}\n",
    );
    let host = |h: &str, p: &str| take(&r, "GET", h, p, &[]);
    assert_eq!(host("shop.example.com", "/cart").as_deref(), Some("shop"));
    assert_eq!(host("SHOP.Example.com:8080", "/cart").as_deref(), Some("shop"), "case and port are ignored");
    assert_eq!(host("shop.example.com", "/other"), None, "no fall through to wildcard or any-host routes");
    assert_eq!(host("api.example.com", "/x").as_deref(), Some("wild"));
    assert_eq!(host("a.b.example.com", "/x").as_deref(), Some("wild"), "a wildcard takes several labels");
    assert_eq!(host("fr.eu.example.com", "/x").as_deref(), Some("deep-wild"), "the longest wildcard wins");
    assert_eq!(host("example.com", "/x").as_deref(), Some("any"), "a wildcard needs a label before it");
    assert_eq!(host("127.0.0.1:80", "/x").as_deref(), Some("any"));
    assert_eq!(host("[::1]:80", "/x").as_deref(), Some("any"));
}

#[test]
fn methods_headers_and_query_refine_and_order_equal_paths() {
    let r = router(
        "routes:\n\
         - {name: plain, match: {prefix: /api}}\n\
         - {name: one-header, match: {prefix: /api, headers: [{name: x-canary, exact: 'yes'}]}}\n\
         - {name: two-headers, match: {prefix: /api, headers: [{name: x-canary, exact: 'yes'}, {name: X-Tier, regex: 'gold|platinum'}]}}\n\
         - {name: post, match: {prefix: /api, methods: [POST]}}\n\
         - {name: no-auth, match: {prefix: /api, headers: [{name: authorization, present: false}], query: [{name: debug, present: true}]}}\n\
         - {name: beta, match: {prefix: /api, query: [{name: v, exact: beta}]}}\n",
    );
    let t = |m: &str, target: &str, h: &[(&str, &str)]| take(&r, m, "h", target, h);
    assert_eq!(t("POST", "/api", &[]).as_deref(), Some("post"), "a method match ranks first");
    assert_eq!(t("GET", "/api", &[("x-canary", "yes"), ("x-tier", "gold")]).as_deref(), Some("two-headers"));
    assert_eq!(t("GET", "/api", &[("x-canary", "yes"), ("x-tier", "silver")]).as_deref(), Some("one-header"));
    assert_eq!(t("GET", "/api?debug", &[]).as_deref(), Some("no-auth"));
    assert_eq!(
        t("GET", "/api?debug=1", &[("authorization", "Bearer x")]).as_deref(),
        Some("plain"),
        "absent means absent"
    );
    assert_eq!(t("GET", "/api?a=1&v=beta", &[]).as_deref(), Some("beta"));
    assert_eq!(t("GET", "/api?v=betamax", &[]).as_deref(), Some("plain"));
}

#[test]
fn a_shorter_prefix_takes_what_a_longer_ones_conditions_refuse() {
    let r = router(
        "routes:\n\
         - {name: root, match: {prefix: /}}\n\
         - {name: admin, match: {prefix: /admin, headers: [{name: x-admin, present: true}]}}\n",
    );
    assert_eq!(take(&r, "GET", "h", "/admin/x", &[("x-admin", "1")]).as_deref(), Some("admin"));
    assert_eq!(take(&r, "GET", "h", "/admin/x", &[]).as_deref(), Some("root"));
}

#[test]
fn lookup_does_not_scan_many_routes() {
    let mut yaml = String::from("routes:\n");
    for i in 0..20_000 {
        yaml.push_str(&format!("- {{name: r{i}, match: {{prefix: /svc{i}/}}}}\n"));
    }
    let r = router(&yaml);
    assert_eq!(get(&r, "/svc19999/x").as_deref(), Some("r19999"));
    assert_eq!(get(&r, "/svc1/x").as_deref(), Some("r1"));
    assert_eq!(get(&r, "/nope"), None);
}

#[test]
fn template_captures_come_with_the_route() {
    let r = router("routes:\n- {name: users, match: {template: '/users/{id}/posts/{post}'}}\n");
    let req = Request::get("/users/7/posts/99").body(()).unwrap();
    let found = r.find(&req).unwrap();
    let params: Vec<(&str, &str)> = found.params.iter().map(|(k, v)| (&**k, &**v)).collect();
    assert_eq!(params, [("id", "7"), ("post", "99")]);
}
