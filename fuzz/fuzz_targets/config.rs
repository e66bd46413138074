//! The STUNner dataplane configuration parser (YAML or JSON, with `$VAR` expansion): any text
//! is parsed or refused, never panics, and what parses survives a JSON round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (expanded, _) = stunner_config::expand_env(text, &|name| {
        (name == "STUNNER_ADDR").then(|| "198.18.1.1".to_owned())
    });
    if let Ok(config) = stunner_config::parse(&expanded) {
        let _ = config.start_settings();
        let json = stunner_config::to_json(&config).expect("a parsed configuration encodes");
        let again = stunner_config::parse(&json).expect("its JSON parses");
        assert_eq!(
            stunner_config::to_json(&again).expect("encodes"),
            json,
            "a JSON round trip changed the configuration"
        );
    }
});
