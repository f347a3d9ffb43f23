//! `#[derive(State)]` for Oris graph states.
//!
//! Use it through the `oris` facade (`use oris::State;`), which re-exports this macro next to
//! the `State` trait. For a struct with named fields the derive writes:
//!
//! - a companion update type, `<Name>Update`, with the struct's visibility and one
//!   `Option<T>` per field: a node's partial write. Unset fields are omitted from its JSON;
//!   a field that is present (even as `null`) is `Some`. Its field names follow the state's
//!   serde renames (`rename`, `alias`, `rename_all`). It derives `Clone`, `Default`, `Debug`,
//!   `Serialize` and `Deserialize`, and has one builder method per field;
//! - `impl State`: `apply` first checks every last-value field for two writers in the
//!   superstep (returning `ReduceError::ConflictingWrites` with `self` untouched), then reduces
//!   the updates in order; `into_update` sets every field; `fields` lists the serialized field
//!   names and their reducers.
//!
//! ```ignore
//! use std::collections::BTreeMap;
//! use oris::State;
//! use serde::{Deserialize, Serialize};
//!
//! fn add(total: &mut i64, update: i64) {
//!     *total += update;
//! }
//!
//! #[derive(Clone, Default, Debug, Serialize, Deserialize, State)]
//! pub struct Research {
//!     /// Last-value (the default): one writer per superstep replaces it.
//!     pub topic: String,
//!     #[reducer(append)]
//!     pub notes: Vec<String>,
//!     #[reducer(merge)]
//!     pub scores: BTreeMap<String, f64>,
//!     #[reducer(custom = add)]
//!     pub total: i64,
//! }
//!
//! let update = ResearchUpdate::default().topic("rust").notes(vec!["a".to_owned()]).total(2);
//! let mut state = Research::default();
//! state.apply(vec![("search", update)]).unwrap();
//! assert_eq!(state.total, 2);
//! ```
//!
//! # Attributes
//!
//! On a field (at most one):
//!
//! | attribute | reduction of an update `v` |
//! |---|---|
//! | none, or `#[reducer(last_value)]` | `self.f = v`; two writers in one superstep is an error |
//! | `#[reducer(append)]` | `Append::append(&mut self.f, v)` (`Vec`, `VecDeque`, `String`) |
//! | `#[reducer(merge)]` | `Merge::merge(&mut self.f, v)` (`BTreeMap`, `HashMap`, JSON map) |
//! | `#[reducer(custom = path::to::f)]` or `custom = "path::to::f"` | `f(&mut self.f, v)`, with `fn f(&mut T, T)` |
//!
//! On the struct:
//!
//! - `#[state(update = "Name")]` names the update type (default `<Struct>Update`);
//! - `#[oris(crate = "::oris_core")]` sets the path the generated code uses to reach
//!   `state::*` and `__private::serde` (default `::oris`), like `#[serde(crate = ...)]`.
//!
//! Generic structs are rejected, and so are fields with `#[serde(flatten)]` or
//! `#[serde(skip…)]` (a state must round-trip through JSON for replay). The field name in
//! `ConflictingWrites` and `fields()` is the serialized one.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{ToTokens, format_ident, quote, quote_spanned};
use syn::spanned::Spanned;
use syn::{Data, DeriveInput, Fields, Ident, parse_macro_input};

mod attrs;

use attrs::{FieldSpec, Reducer, StructOpts, lit};

/// Derives `State` and the companion `…Update` type; see the crate documentation.
#[proc_macro_derive(State, attributes(reducer, state, oris))]
pub fn derive_state(input: TokenStream) -> TokenStream {
    let input = parse_macro_input!(input as DeriveInput);
    expand(&input)
        .unwrap_or_else(syn::Error::into_compile_error)
        .into()
}

/// The whole expansion; errors carry the span of the offending tokens.
fn expand(input: &DeriveInput) -> syn::Result<TokenStream2> {
    const NAMED_ONLY: &str = "State can only be derived for structs with named fields";
    let fields = match &input.data {
        Data::Struct(data) => match &data.fields {
            Fields::Named(named) => &named.named,
            Fields::Unnamed(unnamed) => return Err(syn::Error::new_spanned(unnamed, NAMED_ONLY)),
            Fields::Unit => return Err(syn::Error::new_spanned(&input.ident, NAMED_ONLY)),
        },
        Data::Enum(data) => return Err(syn::Error::new(data.enum_token.span, NAMED_ONLY)),
        Data::Union(data) => return Err(syn::Error::new(data.union_token.span, NAMED_ONLY)),
    };
    let generics = &input.generics;
    if !generics.params.is_empty() || generics.where_clause.is_some() {
        return Err(syn::Error::new_spanned(
            generics,
            "`#[derive(State)]` does not support generic structs; use concrete field types \
             or implement `State` by hand",
        ));
    }
    let opts = attrs::struct_opts(&input.attrs, &input.ident)?;
    // Report every bad field at once.
    let mut specs = Vec::new();
    let mut error: Option<syn::Error> = None;
    for field in fields {
        match attrs::field_spec(field, &opts) {
            Ok(spec) => specs.push(spec),
            Err(e) => match &mut error {
                Some(first) => first.combine(e),
                None => error = Some(e),
            },
        }
    }
    if let Some(e) = error {
        return Err(e);
    }
    let update_type = update_type(input, &opts, &specs);
    let state_impl = state_impl(input, &opts, &specs);
    Ok(quote! { #update_type #state_impl })
}

/// Human description of a reducer, for generated docs.
fn describe(reducer: &Reducer) -> String {
    match reducer {
        Reducer::LastValue => {
            "last-value: replaces the value; at most one writer per superstep".into()
        }
        Reducer::Append => "append: concatenated to the current value".into(),
        Reducer::Merge => "merge: entries are inserted into the current map".into(),
        Reducer::Custom(path) => {
            let path = path.to_token_stream().to_string().replace(' ', "");
            format!("custom: combined with the current value by `{path}`")
        }
    }
}

/// The `…Update` struct, its builder methods and its serde helper.
fn update_type(input: &DeriveInput, opts: &StructOpts, specs: &[FieldSpec]) -> TokenStream2 {
    let StructOpts { krate, update, .. } = opts;
    let vis = &input.vis;
    let state = &input.ident;
    let serde = quote!(#krate::__private::serde);
    let serde_crate = lit(&serde.to_string());
    let deserialize_some = lit(&format!("{update}::__oris_deserialize_some"));

    let mut struct_attrs = Vec::new();
    if opts.rename_all_ser.is_some() || opts.rename_all_de.is_some() {
        let ser = opts.rename_all_ser.iter();
        let de = opts.rename_all_de.iter();
        struct_attrs
            .push(quote!(#[serde(rename_all(#(serialize = #ser,)* #(deserialize = #de,)*))]));
    }
    if opts.deny_unknown_fields {
        struct_attrs.push(quote!(#[serde(deny_unknown_fields)]));
    }
    let type_doc = format!(
        "A partial write to [`{state}`]: the fields a node sets, each reduced into the state by \
         its reducer. Generated by `#[derive(State)]`.",
    );

    let fields = specs.iter().map(|f| {
        let FieldSpec {
            ident,
            ty,
            vis,
            docs,
            ..
        } = f;
        let doc = format!("Update of `{}` ({}).", f.ser_name, describe(&f.reducer));
        let blank = (!docs.is_empty()).then(|| quote!(#[doc = ""]));
        let mut renames = Vec::new();
        if f.rename_ser.is_some() || f.rename_de.is_some() {
            let ser = f.rename_ser.iter();
            let de = f.rename_de.iter();
            renames.push(quote!(#[serde(rename(#(serialize = #ser,)* #(deserialize = #de,)*))]));
        }
        for alias in &f.aliases {
            renames.push(quote!(#[serde(alias = #alias)]));
        }
        quote! {
            #(#docs)* #blank #[doc = #doc]
            #[serde(
                default,
                skip_serializing_if = "::core::option::Option::is_none",
                deserialize_with = #deserialize_some
            )]
            #(#renames)*
            #vis #ident: ::core::option::Option<#ty>,
        }
    });

    let builders = specs.iter().map(|f| {
        let FieldSpec {
            ident, ty, docs, ..
        } = f;
        let doc = format!("Sets `{}` ({}).", f.ser_name, describe(&f.reducer));
        let blank = (!docs.is_empty()).then(|| quote!(#[doc = ""]));
        quote! {
            #(#docs)* #blank #[doc = #doc]
            #[must_use]
            pub fn #ident(mut self, value: impl ::core::convert::Into<#ty>) -> Self {
                self.#ident = ::core::option::Option::Some(value.into());
                self
            }
        }
    });

    quote! {
        #[doc = #type_doc]
        #[derive(
            ::core::clone::Clone,
            ::core::default::Default,
            ::core::fmt::Debug,
            #serde::Serialize,
            #serde::Deserialize
        )]
        #[serde(crate = #serde_crate)]
        #(#struct_attrs)*
        #vis struct #update {
            #(#fields)*
        }

        #[automatically_derived]
        #[allow(dead_code)]
        impl #update {
            #(#builders)*

            /// A field that is present is `Some`, even when its JSON is `null` (which a plain
            /// `Option` would read as unset, losing e.g. a write of `None` to an `Option` field).
            #[doc(hidden)]
            fn __oris_deserialize_some<'de, D, T>(
                deserializer: D,
            ) -> ::core::result::Result<::core::option::Option<T>, D::Error>
            where
                D: #serde::Deserializer<'de>,
                T: #serde::Deserialize<'de>,
            {
                <T as #serde::Deserialize<'de>>::deserialize(deserializer)
                    .map(::core::option::Option::Some)
            }
        }
    }
}

/// `impl State for …`.
fn state_impl(input: &DeriveInput, opts: &StructOpts, specs: &[FieldSpec]) -> TokenStream2 {
    let StructOpts { krate, update, .. } = opts;
    let state = &input.ident;
    let st = quote!(#krate::state);
    // Local names the user's code cannot see or shadow.
    let updates = Ident::new("updates", Span::mixed_site());
    let writer = Ident::new("writer", Span::mixed_site());
    let upd = Ident::new("update", Span::mixed_site());
    let value = Ident::new("value", Span::mixed_site());

    // Pass 1: detect conflicting last-value writes before touching `self`.
    let last_values: Vec<_> = specs
        .iter()
        .filter(|f| matches!(f.reducer, Reducer::LastValue))
        .enumerate()
        .map(|(i, f)| (format_ident!("guard_{}", i, span = Span::mixed_site()), f))
        .collect();
    let check = (!last_values.is_empty()).then(|| {
        let new = last_values.iter().map(|(guard, f)| {
            let name = &f.ser_name;
            quote!(let mut #guard = #st::LastValueGuard::new(#name);)
        });
        let write = last_values.iter().map(|(guard, f)| {
            let ident = f.ident;
            quote!(if #upd.#ident.is_some() { #guard.write(#writer)?; })
        });
        quote! {
            {
                #(#new)*
                for (#writer, #upd) in &#updates {
                    let #writer: #st::Writer<'_> = #writer;
                    #(#write)*
                }
            }
        }
    });

    // Pass 2: move every value in, in update order.
    let reduce = specs.iter().map(|f| {
        let FieldSpec { ident, ty, .. } = f;
        let target = quote!(&mut self.#ident);
        let body = match &f.reducer {
            Reducer::LastValue => quote!(self.#ident = #value;),
            Reducer::Append => {
                quote_spanned!(ty.span()=> <#ty as #st::Append>::append(#target, #value);)
            }
            Reducer::Merge => {
                quote_spanned!(ty.span()=> <#ty as #st::Merge>::merge(#target, #value);)
            }
            Reducer::Custom(path) => quote_spanned!(path.span()=> #path(#target, #value);),
        };
        quote!(if let ::core::option::Option::Some(#value) = #upd.#ident { #body })
    });
    let reduce = if specs.is_empty() {
        quote!(let _ = #updates;)
    } else {
        quote!(for (_, #upd) in #updates { #(#reduce)* })
    };

    let into_fields = specs.iter().map(|f| {
        let ident = f.ident;
        quote!(#ident: ::core::option::Option::Some(self.#ident),)
    });
    let infos = specs.iter().map(|f| {
        let name = &f.ser_name;
        let kind = match f.reducer {
            Reducer::LastValue => quote!(LastValue),
            Reducer::Append => quote!(Append),
            Reducer::Merge => quote!(Merge),
            Reducer::Custom(_) => quote!(Custom),
        };
        quote!(#st::FieldInfo { name: #name, reducer: #st::ReducerKind::#kind },)
    });

    quote! {
        #[automatically_derived]
        impl #st::State for #state {
            type Update = #update;

            fn apply(
                &mut self,
                #updates: ::std::vec::Vec<(#st::Writer<'_>, Self::Update)>,
            ) -> ::core::result::Result<(), #st::ReduceError> {
                #check
                #reduce
                ::core::result::Result::Ok(())
            }

            fn into_update(self) -> Self::Update {
                #update { #(#into_fields)* }
            }

            fn fields() -> &'static [#st::FieldInfo] {
                &[#(#infos)*]
            }
        }
    }
}

#[cfg(test)]
mod tests;
