//! `hanul get KIND [NAME...] [-l SELECTOR] [-o FORMAT] [-w]`: lists or shows objects, and with
//! `-w` keeps printing them as they change.

use super::{check_selector, emit};
use crate::{
    error::{is_not_found, report},
    output::{self, OutputFormat, Table, format_row, now_secs},
    target::{Targets, parse_kind, parse_targets},
};
use anyhow::{Result, bail};
use futures::StreamExt;
use hanul_proto::{Client, Kind, client::WatchUpdate, v1::Object};
use std::{collections::HashSet, process::ExitCode};

/// Arguments of `hanul get`.
#[derive(Debug, clap::Args)]
pub struct Args {
    /// KIND [NAME...] or KIND/NAME...: kinds by any name (instances, instance, i, Instance).
    #[arg(required = true, value_name = "KIND [NAME...]")]
    pub targets: Vec<String>,
    /// Only objects whose labels match (app=web,tier!=db,env in (a,b)).
    #[arg(short = 'l', long = "selector", value_name = "SELECTOR")]
    pub selector: Option<String>,
    /// Output format.
    #[arg(short, long, value_enum, default_value_t)]
    pub output: OutputFormat,
    /// After printing, keep printing changes (one row per change).
    #[arg(short, long)]
    pub watch: bool,
    /// Omit the table's header line.
    #[arg(long)]
    pub no_headers: bool,
}

/// Runs `hanul get`.
pub async fn run(global: &crate::GlobalArgs, args: Args) -> Result<ExitCode> {
    let selector = check_selector(args.selector.as_deref())?;
    // `get i,vol`: several kinds listed at once, as kubectl allows.
    if let [one] = args.targets.as_slice()
        && one.contains(',')
        && !one.contains('/')
    {
        if args.watch {
            bail!("--watch follows one kind at a time");
        }
        let kinds = one
            .split(',')
            .filter(|k| !k.is_empty())
            .map(parse_kind)
            .collect::<Result<Vec<_>>>()?;
        let client = global.connect().await?;
        let mut objects = Vec::new();
        for kind in kinds {
            objects.extend(client.list(Some(kind), &selector).await?.0);
        }
        if objects.is_empty() {
            eprintln!("No resources found.");
            return Ok(ExitCode::SUCCESS);
        }
        emit(&render(
            &objects,
            args.output,
            false,
            !args.no_headers,
            now_secs(),
        ))?;
        return Ok(ExitCode::SUCCESS);
    }
    let targets = parse_targets(&args.targets)?;
    if matches!(targets, Targets::Named(_)) && !selector.is_empty() {
        bail!("name objects or select them with -l, not both");
    }
    let client = global.connect().await?;
    if args.watch {
        return watch(&client, &targets, &selector, &args).await;
    }
    let (objects, failed, single) = match &targets {
        Targets::All(kind) => {
            let (mut items, _) = client.list(Some(*kind), &selector).await?;
            if *kind == Kind::Event {
                items.sort_by_key(output::event_sort_key);
            }
            (items, false, false)
        }
        Targets::Named(named) => {
            let mut found = Vec::new();
            let mut failed = false;
            for (kind, name) in named {
                match client.get(*kind, name).await {
                    Ok(o) => found.push(o),
                    Err(status) => {
                        let err = anyhow::Error::from(status);
                        // A refusal other than NotFound (auth, connection) applies to every name.
                        if !is_not_found(&err) {
                            return Err(err);
                        }
                        report(&err);
                        failed = true;
                    }
                }
            }
            (found, failed, named.len() == 1)
        }
    };
    if objects.is_empty() && !failed {
        eprintln!("No resources found.");
        return Ok(ExitCode::SUCCESS);
    }
    emit(&render(
        &objects,
        args.output,
        single,
        !args.no_headers,
        now_secs(),
    ))?;
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

/// Prints objects in a format. `single`: one object was asked for by name, so `-o json`
/// prints it bare rather than in `{"items": [...]}`. Tables of several kinds are printed one
/// after another, separated by a blank line.
pub fn render(
    objects: &[Object],
    format: OutputFormat,
    single: bool,
    headers: bool,
    now: i64,
) -> String {
    match format {
        OutputFormat::Json if single && objects.len() == 1 => output::json_object(&objects[0]),
        OutputFormat::Json => output::json_list(objects),
        OutputFormat::Yaml => output::yaml(objects),
        OutputFormat::Name => objects.iter().map(|o| output::name_of(o) + "\n").collect(),
        OutputFormat::Table | OutputFormat::Wide => {
            let wide = format == OutputFormat::Wide;
            let mut kinds: Vec<Kind> = Vec::new();
            for k in objects.iter().filter_map(Object::kind) {
                if !kinds.contains(&k) {
                    kinds.push(k);
                }
            }
            let mut out = String::new();
            for (i, kind) in kinds.iter().enumerate() {
                if i > 0 {
                    out.push('\n');
                }
                let of_kind: Vec<Object> = objects
                    .iter()
                    .filter(|o| o.kind() == Some(*kind))
                    .cloned()
                    .collect();
                let text = output::table(*kind, &of_kind, wide, now).render();
                if headers {
                    out.push_str(&text);
                } else {
                    // The header is the first line.
                    out.push_str(text.split_once('\n').map(|(_, rest)| rest).unwrap_or(""));
                }
            }
            out
        }
    }
}

/// Prints objects that changed after the initial list, in the same format, aligned (for
/// tables) on the initial table's columns.
pub struct WatchPrinter {
    format: OutputFormat,
    widths: Option<Vec<usize>>,
    printed: usize,
}

impl WatchPrinter {
    /// A printer for `-w` output in `format`.
    pub fn new(format: OutputFormat) -> WatchPrinter {
        WatchPrinter {
            format,
            widths: None,
            printed: 0,
        }
    }

    /// The text for a batch of objects: the first batch of a table has the header.
    pub fn batch(&mut self, kind: Kind, objects: &[Object], headers: bool, now: i64) -> String {
        let out = match self.format {
            OutputFormat::Table | OutputFormat::Wide => {
                let wide = self.format == OutputFormat::Wide;
                match &self.widths {
                    None => {
                        let t: Table = output::table(kind, objects, wide, now);
                        self.widths = Some(t.widths());
                        let text = t.render();
                        if headers {
                            text
                        } else {
                            text.split_once('\n')
                                .map(|(_, r)| r.to_string())
                                .unwrap_or_default()
                        }
                    }
                    Some(w) => objects
                        .iter()
                        .map(|o| format_row(&output::row(o, wide, now), w))
                        .collect(),
                }
            }
            OutputFormat::Yaml => {
                let mut s = String::new();
                for o in objects {
                    if self.printed > 0 || !s.is_empty() {
                        s.push_str("---\n");
                    }
                    s.push_str(&output::yaml(std::slice::from_ref(o)));
                }
                s
            }
            OutputFormat::Json => objects.iter().map(output::json_object).collect(),
            OutputFormat::Name => objects.iter().map(|o| output::name_of(o) + "\n").collect(),
        };
        self.printed += objects.len();
        out
    }
}

async fn watch(
    client: &Client,
    targets: &Targets,
    selector: &str,
    args: &Args,
) -> Result<ExitCode> {
    let (kind, names): (Kind, Option<HashSet<String>>) = match targets {
        Targets::All(k) => (*k, None),
        Targets::Named(named) => {
            let kind = named[0].0;
            if named.iter().any(|(k, _)| *k != kind) {
                bail!("--watch follows one kind at a time");
            }
            (kind, Some(named.iter().map(|(_, n)| n.clone()).collect()))
        }
    };
    let wanted = |o: &Object| names.as_ref().is_none_or(|n| n.contains(o.name()));
    let mut printer = WatchPrinter::new(args.output);
    let mut listed = false;
    let mut stream = std::pin::pin!(client.list_watch(Some(kind), selector));
    while let Some(update) = stream.next().await {
        match update {
            WatchUpdate::Listed { mut items, .. } => {
                items.retain(&wanted);
                if kind == Kind::Event {
                    items.sort_by_key(output::event_sort_key);
                }
                if !listed && items.is_empty() && printer.widths.is_none() {
                    eprintln!("No resources found.");
                }
                listed = true;
                if !items.is_empty() {
                    emit(&printer.batch(kind, &items, !args.no_headers, now_secs()))?;
                }
            }
            WatchUpdate::Event(ev) => {
                let Some(o) = ev.object else { continue };
                if wanted(&o) {
                    emit(&printer.batch(
                        kind,
                        std::slice::from_ref(&o),
                        !args.no_headers,
                        now_secs(),
                    ))?;
                }
            }
            // Before the first list nothing has been shown: a refusal (auth, bad selector)
            // is the answer. Later ones are retried by the stream; say so and go on.
            WatchUpdate::Error(status) if !listed => return Err(status.into()),
            WatchUpdate::Error(status) => {
                eprintln!(
                    "warning: watch interrupted, retrying: {}",
                    crate::error::render_status(&status)
                );
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hanul_proto::v1::{Image, ObjectMeta, Volume};

    fn image(name: &str) -> Object {
        Image {
            metadata: Some(ObjectMeta {
                name: name.into(),
                ..Default::default()
            }),
            spec: None,
            status: None,
        }
        .into()
    }

    #[test]
    fn json_of_one_named_object_is_bare_and_of_a_list_is_items() {
        let one = render(&[image("a")], OutputFormat::Json, true, true, 0);
        let v: serde_json::Value = serde_json::from_str(&one).unwrap();
        assert_eq!(v["kind"], "Image");
        let list = render(&[image("a")], OutputFormat::Json, false, true, 0);
        let v: serde_json::Value = serde_json::from_str(&list).unwrap();
        assert_eq!(v["items"][0]["metadata"]["name"], "a");
    }

    #[test]
    fn name_output_is_lowercase_kind_slash_name() {
        assert_eq!(
            render(
                &[image("a"), image("b")],
                OutputFormat::Name,
                false,
                true,
                0
            ),
            "image/a\nimage/b\n"
        );
    }

    #[test]
    fn yaml_output_separates_documents() {
        let y = render(
            &[image("a"), image("b")],
            OutputFormat::Yaml,
            false,
            true,
            0,
        );
        assert_eq!(y.matches("---\n").count(), 1, "{y}");
        assert_eq!(hanul_proto::manifest::parse("y", &y).unwrap().len(), 2);
    }

    #[test]
    fn mixed_kinds_print_one_table_each_and_no_headers_drops_them() {
        let vol: Object = Volume {
            metadata: Some(ObjectMeta {
                name: "data".into(),
                ..Default::default()
            }),
            spec: None,
            status: None,
        }
        .into();
        let t = render(&[image("a"), vol], OutputFormat::Table, false, true, 0);
        assert!(t.starts_with("NAME   COMMAND"), "{t}");
        assert!(t.contains("\n\nNAME   SIZE"), "{t}");
        let bare = render(&[image("a")], OutputFormat::Table, false, false, 0);
        assert!(bare.starts_with("a   "), "{bare}");
    }

    #[test]
    fn watched_rows_keep_the_first_tables_columns() {
        let mut p = WatchPrinter::new(OutputFormat::Table);
        let first = p.batch(Kind::Image, &[image("a-long-name")], true, 0);
        assert!(first.starts_with("NAME          COMMAND"), "{first}");
        let next = p.batch(Kind::Image, &[image("b")], true, 0);
        assert!(next.starts_with("b             <none>"), "{next}");
    }
}
