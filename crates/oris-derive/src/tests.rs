//! Expansion errors (the happy path is covered by `tests/derive.rs`).

use syn::parse_quote;

use super::expand;

fn error(input: syn::DeriveInput) -> String {
    match expand(&input) {
        Ok(tokens) => panic!("expected an error, got {tokens}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn rejects_non_struct_and_unnamed() {
    let msg = "State can only be derived for structs with named fields";
    assert_eq!(
        error(parse_quote!(
            enum E {
                A,
            }
        )),
        msg
    );
    assert_eq!(
        error(parse_quote!(
            struct T(u32);
        )),
        msg
    );
    assert_eq!(
        error(parse_quote!(
            struct U;
        )),
        msg
    );
    assert_eq!(error(parse_quote!(union V { a: u32 })), msg);
}

#[test]
fn rejects_generics() {
    let msg = error(parse_quote!(
        struct G<T> {
            t: T,
        }
    ));
    assert!(msg.contains("does not support generic structs"), "{msg}");
    let msg = error(parse_quote!(
        struct W
        where
            u8: Copy,
        {
            t: u8,
        }
    ));
    assert!(msg.contains("does not support generic structs"), "{msg}");
}

#[test]
fn unknown_reducer_lists_valid_ones() {
    let msg = error(parse_quote!(
        struct S {
            #[reducer(sum)]
            a: i64,
        }
    ));
    assert!(msg.contains("unknown reducer"), "{msg}");
    assert!(
        msg.contains("`last_value`, `append`, `merge`, `custom = path::to::fn`"),
        "{msg}"
    );
}

#[test]
fn reducer_needs_an_argument() {
    for input in [
        parse_quote!(
            struct S {
                #[reducer]
                a: i64,
            }
        ),
        parse_quote!(
            struct S {
                #[reducer()]
                a: i64,
            }
        ),
        parse_quote!(
            struct S {
                #[reducer = "append"]
                a: i64,
            }
        ),
    ] {
        let msg = error(input);
        assert!(
            msg.starts_with("expected `#[reducer(...)]` with one of"),
            "{msg}"
        );
    }
    let msg = error(parse_quote!(
        struct S {
            #[reducer(custom)]
            a: i64,
        }
    ));
    assert!(msg.contains("expected `custom = path::to::fn`"), "{msg}");
}

#[test]
fn duplicate_reducers() {
    let msg = error(parse_quote!(
        struct S {
            #[reducer(append)]
            #[reducer(merge)]
            a: Vec<u8>,
        }
    ));
    assert!(msg.starts_with("duplicate reducer"), "{msg}");
    let msg = error(parse_quote!(
        struct S {
            #[reducer(append, merge)]
            a: Vec<u8>,
        }
    ));
    assert!(msg.starts_with("duplicate reducer"), "{msg}");
}

#[test]
fn every_bad_field_is_reported() {
    let input: syn::DeriveInput = parse_quote!(
        struct S {
            #[reducer(x)]
            a: i64,
            #[reducer(y)]
            b: i64,
        }
    );
    let err = expand(&input).unwrap_err();
    assert_eq!(err.into_iter().count(), 2);
}

#[test]
fn misplaced_and_unknown_options() {
    let msg = error(parse_quote!(
        #[reducer(append)]
        struct S {
            a: i64,
        }
    ));
    assert!(msg.contains("goes on a field"), "{msg}");
    let msg = error(parse_quote!(
        struct S {
            #[state(update = "X")]
            a: i64,
        }
    ));
    assert!(msg.contains("goes on the struct"), "{msg}");
    let msg = error(parse_quote!(
        #[state(name = "X")]
        struct S {
            a: i64,
        }
    ));
    assert!(msg.contains("unknown `state` option"), "{msg}");
    let msg = error(parse_quote!(
        #[oris(krate = "x")]
        struct S {
            a: i64,
        }
    ));
    assert!(msg.contains("unknown `oris` option"), "{msg}");
    let msg = error(parse_quote!(
        #[serde(rename_all = "Camel")]
        struct S {
            a: i64,
        }
    ));
    assert!(msg.contains("unknown rename rule"), "{msg}");
}

#[test]
fn unsupported_serde_field_options() {
    for input in [
        parse_quote!(
            struct S {
                #[serde(flatten)]
                a: i64,
            }
        ),
        parse_quote!(
            struct S {
                #[serde(default, skip)]
                a: i64,
            }
        ),
        parse_quote!(
            struct S {
                #[serde(skip_serializing)]
                a: i64,
            }
        ),
    ] {
        let msg = error(input);
        assert!(msg.contains("does not support this serde option"), "{msg}");
    }
}

#[test]
fn tolerates_other_serde_options() {
    let input: syn::DeriveInput = parse_quote! {
        #[serde(default, bound(serialize = "", deserialize = ""), rename_all = "camelCase")]
        struct S {
            #[serde(default = "x", skip_serializing_if = "y", rename(serialize = "b"), alias = "c")]
            a_b: i64,
        }
    };
    let tokens = expand(&input).unwrap().to_string();
    assert!(tokens.contains("rename (serialize = \"b\" ,)"), "{tokens}");
    assert!(tokens.contains("alias = \"c\""), "{tokens}");
    assert!(
        tokens.contains("rename_all (serialize = \"camelCase\" , deserialize = \"camelCase\" ,)"),
        "{tokens}"
    );
}
