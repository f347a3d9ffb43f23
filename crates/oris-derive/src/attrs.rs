//! Parsing of the attributes the derive reads: `#[oris]`, `#[state]` and `#[serde]` on the
//! struct; `#[reducer]` and `#[serde]` on fields.

use proc_macro2::Span;
use syn::ext::IdentExt;
use syn::meta::ParseNestedMeta;
use syn::{Attribute, Ident, LitStr, Path, Token, Type, Visibility};

/// The reducer names `#[reducer(...)]` accepts, for error messages.
const REDUCERS: &str = "`last_value`, `append`, `merge`, `custom = path::to::fn`";

/// The `rename_all` rules serde accepts, for error messages.
const RULES: &[&str] = &[
    "lowercase",
    "UPPERCASE",
    "PascalCase",
    "camelCase",
    "snake_case",
    "SCREAMING_SNAKE_CASE",
    "kebab-case",
    "SCREAMING-KEBAB-CASE",
];

/// Options read from the struct's attributes.
pub(crate) struct StructOpts {
    /// Path of the crate exposing `state` and `__private::serde` (default `::oris`).
    pub krate: Path,
    /// Name of the generated update type.
    pub update: Ident,
    /// serde `rename_all`, serialize side.
    pub rename_all_ser: Option<LitStr>,
    /// serde `rename_all`, deserialize side.
    pub rename_all_de: Option<LitStr>,
    /// serde `deny_unknown_fields`.
    pub deny_unknown_fields: bool,
}

/// How updates of a field are reduced into the state.
pub(crate) enum Reducer {
    LastValue,
    Append,
    Merge,
    Custom(Path),
}

/// One state field and what its attributes say.
pub(crate) struct FieldSpec<'a> {
    pub ident: &'a Ident,
    pub ty: &'a Type,
    pub vis: &'a Visibility,
    /// The field's own `#[doc]` attributes, copied to the update.
    pub docs: Vec<&'a Attribute>,
    pub reducer: Reducer,
    /// serde `rename`, serialize side.
    pub rename_ser: Option<LitStr>,
    /// serde `rename`, deserialize side.
    pub rename_de: Option<LitStr>,
    /// serde `alias`es.
    pub aliases: Vec<LitStr>,
    /// The name the field has in the state's JSON.
    pub ser_name: String,
}

/// Reads `#[oris(crate = ...)]`, `#[state(update = ...)]` and the relevant `#[serde]` keys.
pub(crate) fn struct_opts(attrs: &[Attribute], ident: &Ident) -> syn::Result<StructOpts> {
    let mut krate = None;
    let mut update = None;
    let mut rename_all_ser = None;
    let mut rename_all_de = None;
    let mut deny_unknown_fields = false;
    for attr in attrs {
        if attr.path().is_ident("oris") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("crate") {
                    set_once(&meta, &mut krate, path_value(&meta)?)
                } else {
                    Err(meta.error("unknown `oris` option; expected `crate = \"path\"`"))
                }
            })?;
        } else if attr.path().is_ident("state") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("update") {
                    let value = meta.value()?;
                    let name = if value.peek(LitStr) {
                        value.parse::<LitStr>()?.parse::<Ident>()?
                    } else {
                        value.parse::<Ident>()?
                    };
                    set_once(&meta, &mut update, name)
                } else {
                    Err(meta.error("unknown `state` option; expected `update = \"Name\"`"))
                }
            })?;
        } else if attr.path().is_ident("serde") {
            attr.parse_nested_meta(|meta| {
                if meta.path.is_ident("rename_all") {
                    ser_de_pair(&meta, &mut rename_all_ser, &mut rename_all_de)?;
                    for rule in [&rename_all_ser, &rename_all_de].into_iter().flatten() {
                        if !RULES.contains(&rule.value().as_str()) {
                            let msg = format!("unknown rename rule; expected one of {RULES:?}");
                            return Err(syn::Error::new(rule.span(), msg));
                        }
                    }
                    Ok(())
                } else if meta.path.is_ident("deny_unknown_fields") {
                    deny_unknown_fields = true;
                    Ok(())
                } else {
                    skip_value(&meta)
                }
            })?;
        } else if attr.path().is_ident("reducer") {
            let msg = "`#[reducer]` goes on a field, not on the struct";
            return Err(syn::Error::new_spanned(attr, msg));
        }
    }
    Ok(StructOpts {
        krate: krate.unwrap_or_else(|| syn::parse_quote!(::oris)),
        update: update.unwrap_or_else(|| quote::format_ident!("{}Update", ident.unraw())),
        rename_all_ser,
        rename_all_de,
        deny_unknown_fields,
    })
}

/// Reads a field's `#[reducer]` and `#[serde]` attributes.
pub(crate) fn field_spec<'a>(
    field: &'a syn::Field,
    opts: &StructOpts,
) -> syn::Result<FieldSpec<'a>> {
    let ident = field.ident.as_ref().expect("named field");
    let mut reducer: Option<Reducer> = None;
    let mut rename_ser = None;
    let mut rename_de = None;
    let mut aliases = Vec::new();
    let mut docs = Vec::new();
    for attr in &field.attrs {
        if attr.path().is_ident("doc") {
            docs.push(attr);
        } else if attr.path().is_ident("reducer") {
            if reducer.is_some() {
                let msg = "duplicate reducer: a field has at most one `#[reducer(...)]`";
                return Err(syn::Error::new_spanned(attr, msg));
            }
            reducer = Some(reducer_attr(attr)?);
        } else if attr.path().is_ident("serde") {
            attr.parse_nested_meta(|meta| {
                let p = &meta.path;
                if p.is_ident("rename") {
                    ser_de_pair(&meta, &mut rename_ser, &mut rename_de)
                } else if p.is_ident("alias") {
                    aliases.push(meta.value()?.parse()?);
                    Ok(())
                } else if ["flatten", "skip", "skip_serializing", "skip_deserializing"]
                    .iter()
                    .any(|k| p.is_ident(k))
                {
                    Err(meta.error(
                        "`#[derive(State)]` does not support this serde option: every state \
                         field must round-trip through JSON as itself for replay",
                    ))
                } else {
                    skip_value(&meta)
                }
            })?;
        } else if attr.path().is_ident("state") || attr.path().is_ident("oris") {
            let msg = "this attribute goes on the struct, not on a field";
            return Err(syn::Error::new_spanned(attr, msg));
        }
    }
    let ser_name = match (&rename_ser, &opts.rename_all_ser) {
        (Some(name), _) => name.value(),
        (None, Some(rule)) => apply_rule(&rule.value(), &ident.unraw().to_string()),
        (None, None) => ident.unraw().to_string(),
    };
    Ok(FieldSpec {
        ident,
        ty: &field.ty,
        vis: &field.vis,
        docs,
        reducer: reducer.unwrap_or(Reducer::LastValue),
        rename_ser,
        rename_de,
        aliases,
        ser_name,
    })
}

/// Parses `#[reducer(last_value | append | merge | custom = path | custom = "path")]`.
fn reducer_attr(attr: &Attribute) -> syn::Result<Reducer> {
    let missing = || {
        let msg = format!("expected `#[reducer(...)]` with one of {REDUCERS}");
        syn::Error::new_spanned(attr, msg)
    };
    let list = attr.meta.require_list().map_err(|_| missing())?;
    if list.tokens.is_empty() {
        return Err(missing());
    }
    let mut reducer = None;
    list.parse_nested_meta(|meta| {
        let r = if meta.path.is_ident("last_value") {
            Reducer::LastValue
        } else if meta.path.is_ident("append") {
            Reducer::Append
        } else if meta.path.is_ident("merge") {
            Reducer::Merge
        } else if meta.path.is_ident("custom") {
            if !meta.input.peek(Token![=]) {
                return Err(meta.error("expected `custom = path::to::fn` (a `fn(&mut T, T)`)"));
            }
            Reducer::Custom(path_value(&meta)?)
        } else {
            return Err(meta.error(format!("unknown reducer; expected one of {REDUCERS}")));
        };
        if reducer.is_some() {
            return Err(meta.error("duplicate reducer: a field has exactly one reducer"));
        }
        reducer = Some(r);
        Ok(())
    })?;
    reducer.ok_or_else(missing)
}

/// `key = path` or `key = "path"`.
fn path_value(meta: &ParseNestedMeta) -> syn::Result<Path> {
    let value = meta.value()?;
    if value.peek(LitStr) {
        value.parse::<LitStr>()?.parse()
    } else {
        value.parse()
    }
}

/// Stores `value` into `slot`, refusing a second occurrence of the key.
fn set_once<T>(meta: &ParseNestedMeta, slot: &mut Option<T>, value: T) -> syn::Result<()> {
    if slot.is_some() {
        return Err(meta.error("duplicate option"));
    }
    *slot = Some(value);
    Ok(())
}

/// serde's `key = "x"` or `key(serialize = "x", deserialize = "y")`.
fn ser_de_pair(
    meta: &ParseNestedMeta,
    ser: &mut Option<LitStr>,
    de: &mut Option<LitStr>,
) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        let s: LitStr = meta.value()?.parse()?;
        *ser = Some(s.clone());
        *de = Some(s);
        Ok(())
    } else {
        meta.parse_nested_meta(|inner| {
            if inner.path.is_ident("serialize") {
                *ser = Some(inner.value()?.parse()?);
            } else if inner.path.is_ident("deserialize") {
                *de = Some(inner.value()?.parse()?);
            } else {
                skip_value(&inner)?;
            }
            Ok(())
        })
    }
}

/// Consumes the value of a serde option this derive does not care about.
fn skip_value(meta: &ParseNestedMeta) -> syn::Result<()> {
    if meta.input.peek(Token![=]) {
        meta.value()?.parse::<syn::Expr>()?;
    } else if meta.input.peek(syn::token::Paren) {
        meta.parse_nested_meta(|inner| skip_value(&inner))?;
    }
    Ok(())
}

/// serde's `rename_all` applied to a field name (same algorithm as `serde_derive`).
fn apply_rule(rule: &str, field: &str) -> String {
    let pascal = || {
        let mut out = String::new();
        let mut upper = true;
        for ch in field.chars() {
            if ch == '_' {
                upper = true;
            } else if upper {
                out.push(ch.to_ascii_uppercase());
                upper = false;
            } else {
                out.push(ch);
            }
        }
        out
    };
    match rule {
        "UPPERCASE" | "SCREAMING_SNAKE_CASE" => field.to_ascii_uppercase(),
        "PascalCase" => pascal(),
        "camelCase" => {
            let p = pascal();
            let mut chars = p.chars();
            chars.next().map_or_else(String::new, |c| {
                c.to_ascii_lowercase().to_string() + chars.as_str()
            })
        }
        "kebab-case" => field.replace('_', "-"),
        "SCREAMING-KEBAB-CASE" => field.to_ascii_uppercase().replace('_', "-"),
        _ => field.to_owned(), // lowercase, snake_case
    }
}

/// A string literal with the call-site span, for generated `#[serde]` attributes.
pub(crate) fn lit(value: &str) -> LitStr {
    LitStr::new(value, Span::call_site())
}

#[cfg(test)]
mod tests {
    use super::apply_rule;

    #[test]
    fn rename_rules_match_serde() {
        let f = "user_name_2";
        assert_eq!(apply_rule("lowercase", f), "user_name_2");
        assert_eq!(apply_rule("snake_case", f), "user_name_2");
        assert_eq!(apply_rule("UPPERCASE", f), "USER_NAME_2");
        assert_eq!(apply_rule("SCREAMING_SNAKE_CASE", f), "USER_NAME_2");
        assert_eq!(apply_rule("PascalCase", f), "UserName2");
        assert_eq!(apply_rule("camelCase", f), "userName2");
        assert_eq!(apply_rule("kebab-case", f), "user-name-2");
        assert_eq!(apply_rule("SCREAMING-KEBAB-CASE", f), "USER-NAME-2");
    }
}
