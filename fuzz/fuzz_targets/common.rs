// The quickstart bundle, compiled into every target that decides events.
pub fn quickstart() -> policy_core::Bundle {
    let files = [
        ("base.cedar", include_str!("../../examples/quickstart/base.cedar")),
        ("guardrails.cedar", include_str!("../../examples/quickstart/guardrails.cedar")),
        ("install.cedar", include_str!("../../examples/quickstart/install.cedar")),
        ("bundle.toml", include_str!("../../examples/quickstart/bundle.toml")),
    ];
    policy_core::Bundle::load(files.iter().map(|(p, c)| policy_core::BundleFile {
        path: (*p).into(),
        content: (*c).into(),
    }))
    .expect("the quickstart loads")
}
