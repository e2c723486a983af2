//! Topic builders, the parser, and the validation of every id that becomes a topic level.
use ekattest_protocol::limits::{
    AGENT_ID_MAX, CLUSTER_ID_MAX, NODE_ID_MAX, TOPIC_MAX, TOPIC_PREFIX_MAX,
};
use ekattest_protocol::topic::{
    DEFAULT_PREFIX, Inbound, Part, TopicError, Topics, default_agent_id, validate,
};

const AGENT: &str = "ek-0123456789abcdef0123456789abcdef";

fn topics() -> Topics<'static> {
    Topics::with_default_prefix("c-a1b2c3").unwrap()
}

#[test]
fn builds_every_topic_and_filter() {
    let t = topics();
    assert_eq!(
        t.login(AGENT).unwrap(),
        "ekattest/v1/c-a1b2c3/agents/ek-0123456789abcdef0123456789abcdef/login"
    );
    assert_eq!(
        t.down(AGENT).unwrap(),
        "ekattest/v1/c-a1b2c3/agents/ek-0123456789abcdef0123456789abcdef/down"
    );
    assert_eq!(
        t.answer("node-7", AGENT).unwrap(),
        "ekattest/v1/c-a1b2c3/servers/node-7/answer/ek-0123456789abcdef0123456789abcdef"
    );
    assert_eq!(t.config().unwrap(), "ekattest/v1/c-a1b2c3/config");
    assert_eq!(
        t.logins_filter().unwrap(),
        "ekattest/v1/c-a1b2c3/agents/+/login"
    );
    assert_eq!(
        t.shared_logins_filter().unwrap(),
        "$share/ekattest/ekattest/v1/c-a1b2c3/agents/+/login"
    );
    assert_eq!(
        t.answers_filter("node-7").unwrap(),
        "ekattest/v1/c-a1b2c3/servers/node-7/answer/+"
    );
    assert_eq!(t.prefix(), DEFAULT_PREFIX);
    assert_eq!(t.cluster(), "c-a1b2c3");
}

#[test]
fn custom_prefix_with_several_levels() {
    let t = Topics::new("site-3/att", "c-x").unwrap();
    assert_eq!(t.config().unwrap(), "site-3/att/c-x/config");
    assert_eq!(
        t.parse("site-3/att/c-x/agents/a1/login").unwrap(),
        Inbound::Login { agent: "a1" }
    );
}

#[test]
fn longest_ids_fit_topic_max() {
    let prefix = "p".repeat(TOPIC_PREFIX_MAX);
    let cluster = "c".repeat(CLUSTER_ID_MAX);
    let node = "n".repeat(NODE_ID_MAX);
    let agent = "a".repeat(AGENT_ID_MAX);
    let t = Topics::new(&prefix, &cluster).unwrap();
    let answer = t.answer(&node, &agent).unwrap();
    assert_eq!(
        answer.len(),
        TOPIC_PREFIX_MAX + CLUSTER_ID_MAX + NODE_ID_MAX + AGENT_ID_MAX + 18
    );
    assert!(answer.len() <= TOPIC_MAX);
    assert!(t.shared_logins_filter().unwrap().len() <= TOPIC_MAX);
    assert!(t.login(&agent).unwrap().len() <= TOPIC_MAX);
    assert_eq!(
        t.parse(&answer).unwrap(),
        Inbound::Answer {
            node: &node,
            agent: &agent
        }
    );
}

#[test]
fn rejects_bad_segments() {
    let t = topics();
    for (bad, ch, at) in [
        ("a/b", '/', 1),
        ("+", '+', 0),
        ("ek-#", '#', 3),
        ("a\0b", '\0', 1),
        ("$SYS", '$', 0),
        ("ek 1", ' ', 2),
        ("é", 'é', 0),
    ] {
        assert_eq!(
            t.login(bad).unwrap_err(),
            TopicError::BadChar {
                part: Part::Agent,
                ch,
                at
            },
            "{bad:?}"
        );
        assert!(
            matches!(
                t.answer(bad, AGENT).unwrap_err(),
                TopicError::BadChar {
                    part: Part::Node,
                    ..
                }
            ),
            "{bad:?}"
        );
        assert!(matches!(
            Topics::with_default_prefix(bad).unwrap_err(),
            TopicError::BadChar {
                part: Part::Cluster,
                ..
            }
        ));
    }
    assert_eq!(
        t.down("").unwrap_err(),
        TopicError::Empty { part: Part::Agent }
    );
    let long = "a".repeat(AGENT_ID_MAX + 1);
    let err = t.login(&long).unwrap_err();
    assert_eq!(
        err,
        TopicError::TooLong {
            part: Part::Agent,
            len: AGENT_ID_MAX + 1,
            limit: AGENT_ID_MAX
        }
    );
    assert!(
        err.to_string().contains("agent id is 65 bytes long"),
        "{err}"
    );
    assert!(matches!(
        t.answers_filter(&"n".repeat(NODE_ID_MAX + 1)).unwrap_err(),
        TopicError::TooLong {
            part: Part::Node,
            ..
        }
    ));
}

#[test]
fn rejects_bad_prefixes() {
    for bad in ["", "/a", "a/", "a//b", "/"] {
        assert_eq!(
            Topics::new(bad, "c-1").unwrap_err(),
            TopicError::Empty { part: Part::Prefix },
            "{bad:?}"
        );
    }
    for bad in ["$share/x", "a/+/b", "a/#"] {
        assert!(
            matches!(
                Topics::new(bad, "c-1").unwrap_err(),
                TopicError::BadChar {
                    part: Part::Prefix,
                    ..
                }
            ),
            "{bad:?}"
        );
    }
    assert!(matches!(
        Topics::new(&"p".repeat(TOPIC_PREFIX_MAX + 1), "c-1").unwrap_err(),
        TopicError::TooLong {
            part: Part::Prefix,
            ..
        }
    ));
    assert!(validate(Part::Prefix, "a/b.c/d_e-f").is_ok());
    assert!(validate(Part::Agent, "a/b").is_err());
}

#[test]
fn parses_received_topics() {
    let t = topics();
    let login = t.login(AGENT).unwrap();
    assert_eq!(t.parse(&login).unwrap(), Inbound::Login { agent: AGENT });
    let down = t.down(AGENT).unwrap();
    assert_eq!(t.parse(&down).unwrap(), Inbound::Down { agent: AGENT });
    let answer = t.answer("node-7", AGENT).unwrap();
    assert_eq!(
        t.parse(&answer).unwrap(),
        Inbound::Answer {
            node: "node-7",
            agent: AGENT
        }
    );
    let config = t.config().unwrap();
    assert_eq!(t.parse(&config).unwrap(), Inbound::Config);
}

#[test]
fn parse_rejects_foreign_and_malformed_topics() {
    let t = topics();
    for topic in [
        "",
        "ekattest/v1",
        "ekattest/v1/c-a1b2c3",
        "ekattest/v1/c-a1b2c3/",
        "ekattest/v2/c-a1b2c3/agents/a/login",
        "ekattest/v1/c-other/agents/a/login",
        "ekattest/v1/c-a1b2c3x/agents/a/login",
        "ekattest/v1x/c-a1b2c3/agents/a/login",
        "ekattest/v1/c-a1b2c3/agents/a/login/extra",
        "ekattest/v1/c-a1b2c3/agents/a",
        "ekattest/v1/c-a1b2c3/agents/a/result",
        "ekattest/v1/c-a1b2c3/servers/n/answer",
        "ekattest/v1/c-a1b2c3/servers/n/answer/a/b",
        "ekattest/v1/c-a1b2c3/config/x",
        "$share/ekattest/ekattest/v1/c-a1b2c3/agents/+/login",
    ] {
        assert_eq!(t.parse(topic), Err(TopicError::NotOurs), "{topic:?}");
    }
    // Right shape, bad id: the id error, not NotOurs.
    assert_eq!(
        t.parse("ekattest/v1/c-a1b2c3/agents//login"),
        Err(TopicError::Empty { part: Part::Agent })
    );
    assert!(matches!(
        t.parse("ekattest/v1/c-a1b2c3/agents/+/login"),
        Err(TopicError::BadChar {
            part: Part::Agent,
            ch: '+',
            ..
        })
    ));
    assert!(matches!(
        t.parse("ekattest/v1/c-a1b2c3/servers/n$/answer/a"),
        Err(TopicError::BadChar {
            part: Part::Node,
            ..
        })
    ));
}

#[test]
fn default_agent_id_is_ek_and_32_hex_digits() {
    let hash: [u8; 32] = core::array::from_fn(|i| (i as u8).wrapping_mul(17).wrapping_add(0xa0));
    let id = default_agent_id(&hash);
    assert_eq!(id.len(), 35);
    assert_eq!(&id[..3], "ek-");
    assert_eq!(&id[3..], hex::encode(&hash[..16]));
    assert!(validate(Part::Agent, &id).is_ok());
    // The STM certificate's public_hash, as the seed's openssl pipeline prints it.
    let stm =
        hex::decode("de6a6ba0564fc32ed137b2e2c97b39c741e87a3fbbb80bc9092b75b6dc8a2aab").unwrap();
    let id = default_agent_id(&stm.try_into().unwrap());
    assert_eq!(id, "ek-de6a6ba0564fc32ed137b2e2c97b39c7");
}
