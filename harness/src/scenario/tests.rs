use super::*;

fn parse(text: &str) -> Result<Scenario, ScenarioError> {
    Scenario::parse(text, "s.toml", "s", &[])
}

#[test]
fn a_minimal_scenario_takes_the_defaults() {
    let s = parse("[[tests]]\nkind = \"tcp-rr\"\n").unwrap();
    assert_eq!(s.name, "s");
    assert_eq!(s.platform, PlatformChoice::Auto);
    assert_eq!(s.lab.zones, vec!["a", "b", "c"]);
    assert_eq!(s.lab.nodes_per_zone, 2);
    assert_eq!(s.defaults.pairs, Pairs::ZoneMatrix);
    assert_eq!(s.defaults.duration.0, Duration::from_secs(10));
}

#[test]
fn an_unknown_field_names_the_file_line_and_field() {
    let e = parse("[[tests]]\nkind = \"tcp-rr\"\ndurration = \"1s\"\n").unwrap_err();
    assert_eq!(e.location, "s.toml:3:1", "{e}");
    assert!(e.message.contains("durration"), "{e}");
}

#[test]
fn a_bad_value_names_its_line() {
    let e = parse("[lab]\nzones = \"a,b\"\ninter_zone_delay = \"soon\"\n[[tests]]\nkind = \"tcp-rr\"\n").unwrap_err();
    assert_eq!(e.location, "s.toml:3", "{e}");
    assert_eq!(e.field, "lab.inter_zone_delay");
    assert!(e.message.contains("soon"), "{e}");
    let e = parse("[[tests]]\nkind = \"tcp-rrr\"\n").unwrap_err();
    assert!(e.location.starts_with("s.toml:2:"), "{e}");
    assert!(e.message.contains("tcp-rrr"), "{e}");
    let e = parse("[[tests]]\nkind = \"udp-stream\"\nrate = \"fast\"\n").unwrap_err();
    assert!(e.location.starts_with("s.toml:3:"), "{e}");
}

#[test]
fn a_rule_across_fields_names_the_field_and_its_line() {
    let e = parse("[lab]\nzones = \"a\"\n\n[[tests]]\nkind = \"tcp-rr\"\npairs = \"cross-zone\"\n").unwrap_err();
    assert_eq!(e.field, "tests[0].pairs");
    assert_eq!(e.location, "s.toml:6");
    let e = parse("[[tests]]\nkind = \"tcp-rr\"\n[[tests]]\nkind = \"http\"\nconnections = 0\n").unwrap_err();
    assert_eq!(e.field, "tests[1].connections");
    assert_eq!(e.location, "s.toml:5");
    let e = parse("[lab]\nnodes_per_zone = 0\n[[tests]]\nkind = \"tcp-rr\"\n").unwrap_err();
    assert_eq!(e.field, "lab.nodes_per_zone");
    assert_eq!(e.location, "s.toml:2");
}

#[test]
fn a_scenario_without_tests_is_refused() {
    let e = parse("tests = []\n").unwrap_err();
    assert_eq!(e.field, "tests");
    assert!(parse("name = \"x\"\n").unwrap_err().message.contains("tests"));
}

#[test]
fn duplicate_labels_are_refused() {
    let e = parse("[[tests]]\nkind = \"tcp-rr\"\n[[tests]]\nkind = \"tcp-rr\"\n").unwrap_err();
    assert!(e.message.contains("distinct"), "{e}");
    parse("[[tests]]\nkind = \"tcp-rr\"\n[[tests]]\nkind = \"tcp-rr\"\nname = \"tcp-rr-big\"\nrequest_size = \"1K\"\n")
        .unwrap();
}

#[test]
fn service_tests_and_the_lab_dataplane_are_accepted() {
    let s =
        parse("[lab]\nservice_dataplane = \"nftables\"\n[[tests]]\nkind = \"tcp-rr\"\nvia = \"service\"\n").unwrap();
    assert_eq!(s.tests[0].via, Some(Via::Service));
    assert_eq!(s.lab.service_dataplane, crate::model::DataplaneKind::Nftables);
    let e = parse("[lab]\nservice_dataplane = \"ipvs\"\n[[tests]]\nkind = \"tcp-rr\"\n").unwrap_err();
    assert!(e.location.starts_with("s.toml:2:"), "{e}");
    assert!(e.message.contains("ipvs") && e.message.contains("nftables"), "{e}");
}

#[test]
fn a_sweep_checks_its_points_and_needs_service_tests() {
    let ok = "[defaults]\nvia = \"service\"\n[sweep]\nservices = [10, 100]\ndataplanes = [\"nftables\"]\n[[tests]]\nkind = \"tcp-crr\"\n";
    let s = parse(ok).unwrap();
    let sweep = s.sweep.unwrap();
    assert_eq!(sweep.services, [10, 100]);
    assert_eq!(sweep.dataplanes, [crate::model::DataplaneKind::Nftables]);
    let e = parse("[sweep]\nservices = [10]\n[[tests]]\nkind = \"tcp-crr\"\n").unwrap_err();
    assert_eq!(e.field, "tests[0].via");
    assert!(e.message.contains("service"), "{e}");
    let e = parse(&ok.replace("[10, 100]", "[10, 0]")).unwrap_err();
    assert_eq!(e.field, "sweep.services");
    assert_eq!(e.location, "s.toml:4");
    let e = parse(&ok.replace("[10, 100]", "[40000]")).unwrap_err();
    assert!(e.message.contains("30000"), "{e}");
    let e = parse(&ok.replace("[\"nftables\"]", "[\"nftables\", \"nftables\"]")).unwrap_err();
    assert_eq!(e.field, "sweep.dataplanes");
    let e = parse(&ok.replace("[\"nftables\"]", "[\"ipvs\"]")).unwrap_err();
    assert!(e.message.contains("ipvs"), "{e}");
}

#[test]
fn overrides_change_any_field_and_are_validated() {
    let text = "[[tests]]\nkind = \"tcp-rr\"\n";
    let s = Scenario::parse(
        text,
        "s.toml",
        "s",
        &["lab.inter_zone_delay=500us".into(), "tests.0.duration=2s".into(), "lab.nodes_per_zone=1".into()],
    )
    .unwrap();
    assert_eq!(s.lab.inter_zone_delay.as_deref(), Some("500us"));
    assert_eq!(s.tests[0].duration, Some(HumanDuration(Duration::from_secs(2))));
    assert_eq!(s.lab.nodes_per_zone, 1);

    let e = Scenario::parse(text, "s.toml", "s", &["lab.nodes_per_zone=zero".into()]).unwrap_err();
    assert_eq!(e.location, "--set lab.nodes_per_zone=zero");
    let e = Scenario::parse(text, "s.toml", "s", &["lab.colour=red".into()]).unwrap_err();
    assert!(e.message.contains("colour"), "{e}");
    let e = Scenario::parse(text, "s.toml", "s", &["tests.5.duration=1s".into()]).unwrap_err();
    assert!(e.message.contains("past the end"), "{e}");
    let e = Scenario::parse(text, "s.toml", "s", &["novalue".into()]).unwrap_err();
    assert!(e.message.contains("key.path=value"), "{e}");
}

#[test]
fn the_checked_in_scenarios_parse() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Scenario::load(&path, &[]).unwrap_or_else(|e| panic!("{e}"));
            seen += 1;
        }
    }
    assert!(seen >= 1, "no scenarios found in {dir}");
}

#[test]
fn max_spread_pct_defaults_to_ten_and_must_be_positive() {
    let s = parse("[[tests]]\nkind = \"tcp-rr\"\n").unwrap();
    assert_eq!(s.defaults.max_spread_pct, 10.0);
    let e = parse("[defaults]\nmax_spread_pct = 0\n[[tests]]\nkind = \"tcp-rr\"\n").unwrap_err();
    assert_eq!(e.field, "defaults.max_spread_pct");
    assert_eq!(e.location, "s.toml:2", "{e}");
    let e = Scenario::parse("[[tests]]\nkind = \"tcp-rr\"\n", "s.toml", "s", &["defaults.max_spread_pct=-5".into()])
        .unwrap_err();
    assert_eq!(e.field, "defaults.max_spread_pct", "{e}");
}

const TOPOLOGY: &str = "[topology]\nmodes = [\"none\", \"auto\"]\n[[topology.placements]]\nendpoints_per_zone = [3, 3, 3]\n[[topology.placements]]\nprefix = \"skewed-\"\nendpoints_per_zone = [2, 2, 1]\n[[tests]]\nkind = \"tcp-crr\"\nvia = \"service\"\n";

#[test]
fn topology_variants_are_each_placement_under_each_mode() {
    let s = parse(TOPOLOGY).unwrap();
    let names: Vec<String> = s.topology.unwrap().variants().into_iter().map(|v| v.name).collect();
    assert_eq!(names, ["none", "auto", "skewed-none", "skewed-auto"]);
}

#[test]
fn a_placement_with_the_wrong_zone_count_names_its_line() {
    let text = TOPOLOGY.replace("[2, 2, 1]", "[2, 2]");
    let e = parse(&text).unwrap_err();
    assert_eq!(e.field, "topology.placements[1].endpoints_per_zone", "{e}");
    assert_eq!(e.location, "s.toml:7", "{e}");
    assert!(e.message.contains("2 counts for 3 zones"), "{e}");
}

#[test]
fn an_unknown_routing_mode_names_its_line() {
    let e = parse(&TOPOLOGY.replace("\"auto\"]", "\"sometimes\"]")).unwrap_err();
    assert!(e.location.starts_with("s.toml:2:"), "{e}");
    assert!(e.message.contains("sometimes"), "{e}");
}

#[test]
fn topology_without_a_service_test_is_refused() {
    let e = parse(&TOPOLOGY.replace("via = \"service\"\n", "")).unwrap_err();
    assert_eq!(e.field, "topology", "{e}");
}

#[test]
fn a_negative_cross_zone_price_is_refused_by_field() {
    let e = parse("[cost]\nper_gb_cross_zone = -0.01\n[[tests]]\nkind = \"tcp-rr\"\n").unwrap_err();
    assert_eq!(e.field, "cost.per_gb_cross_zone", "{e}");
    assert_eq!(e.location, "s.toml:2", "{e}");
}

#[test]
fn clients_take_all_or_a_count_per_zone_and_a_bad_value_is_named() {
    let s =
        parse("[[tests]]\nkind = \"tcp-rr\"\nclients = \"all\"\n[[tests]]\nkind = \"http\"\nclients = 3\n").unwrap();
    assert_eq!(s.tests[0].clients, Some(Clients::All));
    assert_eq!(s.tests[1].clients, Some(Clients::PerZone(3)));
    assert_eq!(concurrency::placed_clients(&s), 3, "the run places what the tests ask for");
    let e = parse("[[tests]]\nkind = \"tcp-rr\"\nclients = \"many\"\n").unwrap_err();
    assert!(e.location.starts_with("s.toml:3:") && e.message.contains("\"many\""), "{e}");
    let e = parse("[[tests]]\nkind = \"tcp-rr\"\nclients = 17\n").unwrap_err();
    assert_eq!(e.field, "tests[0].clients", "{e}");
}

#[test]
fn zone_weights_for_zones_that_do_not_exist_are_refused_by_name() {
    let e =
        parse("[lab]\nzones = \"a,b\"\n[[tests]]\nkind = \"tcp-rr\"\nzone_weights = { a = 3, d = 1 }\n").unwrap_err();
    assert_eq!(e.field, "tests[0].zone_weights", "{e}");
    assert!(e.message.contains("\"d\"") && e.message.contains("a, b"), "{e}");
    assert_eq!(e.location, "s.toml:5", "{e}");
    let e = parse("[[tests]]\nkind = \"tcp-rr\"\nzone_weights = { a = 0 }\n").unwrap_err();
    assert!(e.message.contains("above 0"), "{e}");
    let e = parse("[[tests]]\nkind = \"tcp-rr\"\nclients = 2\nzone_weights = { a = 1 }\n").unwrap_err();
    assert!(e.message.contains("client counts"), "{e}");
    let e = parse("[[tests]]\nkind = \"tcp-rr\"\nzone_weights = { a = 20 }\n").unwrap_err();
    assert!(e.message.contains("20 clients"), "{e}");
    // With a rate to split, a weight is a ratio and may be large.
    parse("[[tests]]\nkind = \"http\"\nqps = 900\nzone_weights = { a = 30, b = 10 }\n").unwrap();
}

#[test]
fn concurrency_in_a_sweep_and_a_bad_overload_threshold_are_refused() {
    let e = parse("[sweep]\n[[tests]]\nkind = \"tcp-rr\"\nvia = \"service\"\nclients = \"all\"\n").unwrap_err();
    assert_eq!(e.field, "tests[0].clients", "{e}");
    assert!(e.message.contains("not supported in a [sweep]"), "{e}");
    let e = parse("[defaults]\noverload_threshold = 1.0\n[[tests]]\nkind = \"tcp-rr\"\n").unwrap_err();
    assert_eq!(e.field, "defaults.overload_threshold", "{e}");
}

#[test]
fn a_capacity_search_needs_an_slo_an_http_test_and_a_sane_range() {
    let s = parse("[[tests]]\nkind = \"http\"\nqps = \"max\"\nslo_p99 = \"10ms\"\n").unwrap();
    let search = s.tests[0].search().unwrap();
    assert_eq!(search.slo_p99_ns, 10_000_000);
    assert_eq!(s.tests[0].rate_qps(), None, "a search sends no fixed rate");
    assert_eq!(parse("[[tests]]\nkind = \"http\"\nqps = 250\n").unwrap().tests[0].rate_qps(), Some(250.0));
    let cases = [
        ("qps = \"max\"\n", "tests[0].slo_p99", "needs the SLO"),
        (
            "qps = \"max\"\nslo_p99 = \"10ms\"\nsearch_min_qps = 500\nsearch_max_qps = 400\n",
            "tests[0].search_max_qps",
            "above search_min_qps",
        ),
        ("qps = \"max\"\nslo_p99 = \"10ms\"\nslo_error_pct = 120\n", "tests[0].slo_error_pct", "0 to 100"),
        ("slo_p99 = \"10ms\"\n", "tests[0].slo_p99", "set qps = \"max\""),
        ("qps = \"max\"\nslo_p99 = \"10ms\"\nclients = 2\n", "tests[0].qps", "concurrent searches"),
    ];
    for (body, field, says) in cases {
        let e = parse(&format!("[[tests]]\nkind = \"http\"\n{body}")).unwrap_err();
        assert_eq!(e.field, field, "{body}: {e}");
        assert!(e.message.contains(says), "{body}: {e}");
    }
    // tcp-rr and udp-rr have open-loop rates too; the other kinds do not.
    for kind in ["tcp-rr", "udp-rr"] {
        let s = parse(&format!("[[tests]]\nkind = \"{kind}\"\nqps = \"max\"\nslo_p99 = \"1ms\"\n")).unwrap();
        assert!(s.tests[0].search().is_some(), "{kind}");
    }
    let e = parse("[[tests]]\nkind = \"tcp-crr\"\nqps = \"max\"\nslo_p99 = \"1ms\"\n").unwrap_err();
    assert!(e.field == "tests[0].qps" && e.message.contains("tcp-crr has none"), "{e}");
    let e = parse("[[tests]]\nkind = \"tcp-stream\"\nqps = 500\n").unwrap_err();
    assert!(e.field == "tests[0].qps" && e.message.contains("not tcp-stream"), "{e}");
    let e = parse("[[tests]]\nkind = \"http\"\nqps = \"lots\"\n").unwrap_err();
    assert!(e.location.starts_with("s.toml:3:") && e.message.contains("\"lots\""), "{e}");
    let e = parse("[agents]\nmax_answer_qps = -3\n[[tests]]\nkind = \"http\"\n").unwrap_err();
    assert_eq!(e.field, "agents.max_answer_qps", "{e}");
}
