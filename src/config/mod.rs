//! Configuration: reading the YAML file into typed structs and reporting every problem
//! with its field path and line. Loading what the fields point at (certificates, CRLs,
//! backends) belongs to the layers that use them; they report through [`Problems`].

mod check;
mod schema;
mod source;

use std::fmt;
use std::path::{Path, PathBuf};

pub use check::check_values;
pub use schema::*;
pub use source::SourceMap;

/// A configuration file read and parsed, not yet checked against the files it names.
#[derive(Debug, Clone)]
pub struct LoadedConfig {
    /// The parsed configuration.
    pub config: Config,
    /// The file it came from.
    pub path: PathBuf,
    /// Where each field sits in the file.
    pub source: SourceMap,
}

impl LoadedConfig {
    /// Resolves a path written in the config against the config file's folder.
    pub fn resolve(&self, relative: &Path) -> PathBuf {
        let base = self.path.parent().unwrap_or(Path::new("."));
        base.join(relative)
    }

    /// Each ingress, with the field path it is reported under.
    pub fn ingress_sources(&self) -> Vec<(String, IngressSource<'_>)> {
        (self.config.ingress_list().into_iter())
            .map(|(scope, ingress)| {
                let source = IngressSource {
                    config: &self.config,
                    ingress,
                    loaded: self,
                };
                (scope, source)
            })
            .collect()
    }

    /// An empty collector for problems found in this file.
    pub fn problems(&self) -> Problems {
        Problems {
            file: self.path.clone(),
            source: self.source.clone(),
            items: Vec::new(),
            warnings: Vec::new(),
            scope: None,
        }
    }
}

/// One ingress of a configuration, as the code that builds its running state reads it.
#[derive(Debug, Clone, Copy)]
pub struct IngressSource<'a> {
    /// The whole file, for the settings every ingress shares.
    pub config: &'a Config,
    /// This ingress.
    pub ingress: &'a IngressConfig,
    loaded: &'a LoadedConfig,
}

impl IngressSource<'_> {
    /// Resolves a path written in the config against the config file's folder.
    pub fn resolve(&self, relative: &Path) -> PathBuf {
        self.loaded.resolve(relative)
    }
}

/// Reads and parses `path`: YAML syntax, types, and unknown fields (all of them, not only
/// the first).
pub fn load(path: &Path) -> Result<LoadedConfig, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError {
        file: path.to_owned(),
        problems: vec![Problem::new(
            "",
            None,
            format!("cannot read the file: {error}"),
        )],
    })?;
    parse(path, &text)
}

/// Parses `text` as the configuration file `path`.
pub fn parse(path: &Path, text: &str) -> Result<LoadedConfig, ConfigError> {
    let source = SourceMap::index(text);
    let mut problems = Problems {
        file: path.to_owned(),
        source: source.clone(),
        items: Vec::new(),
        warnings: Vec::new(),
        scope: None,
    };
    let mut unknown = Vec::new();
    let mut failed_at = None;

    let parsed =
        serde_saphyr::with_deserializer_from_str_with_options(text, yaml_options(), |de| {
            let mut on_unknown = |path: serde_ignored::Path<'_>| unknown.push(ignored_path(&path));
            let tracked = serde_ignored::Deserializer::new(de, &mut on_unknown);
            serde_path_to_error::deserialize::<_, Config>(tracked).map_err(|error| {
                failed_at = Some(located_path(error.path()));
                error.into_inner()
            })
        });

    for field in unknown {
        problems.push(&field, "unknown field");
    }
    match parsed {
        Ok(config) if problems.is_empty() => Ok(LoadedConfig {
            config,
            path: path.into(),
            source,
        }),
        Ok(_) => Err(problems.into_error()),
        Err(error) => {
            let line = error.location().map(|at| at.line() as usize);
            let field = failed_at.filter(|path| path != "?").unwrap_or_default();
            problems
                .items
                .push(Problem::new(&field, line, yaml_message(&error)));
            Err(problems.into_error())
        }
    }
}

/// Problems found while checking a configuration, each tied to a field.
#[derive(Debug)]
pub struct Problems {
    file: PathBuf,
    source: SourceMap,
    items: Vec<Problem>,
    warnings: Vec<Problem>,
    /// Where `ingress` fields are reported while one of several ingresses is checked.
    scope: Option<String>,
}

impl Problems {
    /// Records that the field at `path` is wrong, and why.
    pub fn push(&mut self, path: &str, message: impl Into<String>) {
        let path = self.in_scope(path);
        let line = self.source.line_of(&path);
        self.items.push(Problem::new(&path, line, message.into()));
    }

    /// Records something that works but is probably not what the operator meant.
    pub fn warn(&mut self, path: &str, message: impl Into<String>) {
        let path = self.in_scope(path);
        let line = self.source.line_of(&path);
        self.warnings
            .push(Problem::new(&path, line, message.into()));
    }

    /// Runs `check` with the fields it reports under `ingress` moved to `scope` (such
    /// as `ingresses[2]`): the code that checks an ingress names its fields one way.
    pub fn scoped<T>(&mut self, scope: &str, check: impl FnOnce(&mut Self) -> T) -> T {
        let outer = self.scope.replace(scope.to_owned());
        let result = check(self);
        self.scope = outer;
        result
    }

    fn in_scope(&self, path: &str) -> String {
        let rest = path.strip_prefix("ingress");
        match (&self.scope, rest) {
            (Some(scope), Some(rest)) if rest.is_empty() || rest.starts_with(['.', '[']) => {
                format!("{scope}{rest}")
            }
            _ => path.to_owned(),
        }
    }

    /// The warnings recorded so far, each as `file:line: field: message`.
    pub fn warnings(&self) -> Vec<String> {
        self.warnings
            .iter()
            .map(|warning| warning.display_in(&self.file))
            .collect()
    }

    /// How many problems have been found.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing has been found.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// `Ok(value)` when nothing was found, otherwise every problem.
    pub fn finish<T>(self, value: T) -> Result<T, ConfigError> {
        if self.items.is_empty() {
            Ok(value)
        } else {
            Err(self.into_error())
        }
    }

    /// Every problem found, as an error.
    pub fn into_error(self) -> ConfigError {
        ConfigError {
            file: self.file,
            problems: self.items,
        }
    }
}

/// A configuration that cannot be used, with every problem found in it.
#[derive(Debug, Clone)]
pub struct ConfigError {
    /// The configuration file.
    pub file: PathBuf,
    /// What is wrong, field by field.
    pub problems: Vec<Problem>,
}

impl std::error::Error for ConfigError {}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let count = self.problems.len();
        let noun = if count == 1 { "problem" } else { "problems" };
        write!(f, "{}: {count} {noun}", self.file.display())?;
        for problem in &self.problems {
            write!(f, "\n  {}", problem.display_in(&self.file))?;
        }
        Ok(())
    }
}

/// One thing wrong with one field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field, as `section.field[index]`; empty for the file as a whole.
    pub path: String,
    /// The 1-based line, where known.
    pub line: Option<usize>,
    /// What is wrong and what was expected.
    pub message: String,
}

impl Problem {
    fn new(path: &str, line: Option<usize>, message: String) -> Self {
        Self {
            path: path.to_owned(),
            line,
            message,
        }
    }

    fn display_in(&self, file: &Path) -> String {
        let place = match self.line {
            Some(line) => format!("{}:{line}", file.display()),
            None => file.display().to_string(),
        };
        if self.path.is_empty() {
            format!("{place}: {}", self.message)
        } else {
            format!("{place}: {}: {}", self.path, self.message)
        }
    }
}

/// The deepest nesting of mappings and lists a file may have. The schema needs about
/// eight levels; a deeper file is refused before its nesting can use up the stack of
/// the thread that parses it: the reload thread has 2 MiB, which the parser's default
/// limit of 64 levels overflows in an unoptimised build.
const MAX_YAML_DEPTH: usize = 24;

fn yaml_options() -> serde_saphyr::Options {
    let mut options = serde_saphyr::Options::default();
    options.with_snippet = false;
    options.strict_booleans = true;
    let mut budget = serde_saphyr::budget::Budget::default();
    budget.max_depth = MAX_YAML_DEPTH;
    options.budget = Some(budget);
    options
}

/// The parser's message without the location it also reports separately.
fn yaml_message(error: &serde_saphyr::Error) -> String {
    let text = error.to_string();
    let first = text.lines().next().unwrap_or_default();
    let message = match first.rfind(" at line ") {
        Some(cut) => &first[..cut],
        None => first,
    };
    // Advice about the parser's own options is no help to an operator.
    let message = message
        .split(", set DuplicateKeyPolicy")
        .next()
        .unwrap_or(message);
    if message.contains("expected a duration") {
        return format!("{message} with a unit, such as \"500ms\", \"10s\" or \"5m\"");
    }
    if message.contains("unexpected end of input") {
        return "the file is empty or ends too early".to_owned();
    }
    message.to_owned()
}

fn located_path(path: &serde_path_to_error::Path) -> String {
    use serde_path_to_error::Segment;
    let mut out = String::new();
    for segment in path.iter() {
        match segment {
            Segment::Seq { index } => out.push_str(&format!("[{index}]")),
            Segment::Map { key } | Segment::Enum { variant: key } => push_key(&mut out, key),
            Segment::Unknown => push_key(&mut out, "?"),
        }
    }
    out
}

fn ignored_path(path: &serde_ignored::Path<'_>) -> String {
    use serde_ignored::Path as P;
    match path {
        P::Root => String::new(),
        P::Seq { parent, index } => format!("{}[{index}]", ignored_path(parent)),
        P::Map { parent, key } => {
            let mut out = ignored_path(parent);
            push_key(&mut out, key);
            out
        }
        P::Some { parent } | P::NewtypeStruct { parent } | P::NewtypeVariant { parent } => {
            ignored_path(parent)
        }
    }
}

fn push_key(out: &mut String, key: &str) {
    if !out.is_empty() {
        out.push('.');
    }
    out.push_str(key);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn problems_of(text: &str) -> Vec<Problem> {
        parse(Path::new("t.yaml"), text)
            .expect_err("config should be refused")
            .problems
    }

    const MINIMAL: &str = "\
listen: [\"127.0.0.1:8443\"]
ingress:
  hostname: a.example
  server_tls: {cert_chain: c.pem, private_key: k.pem}
  transport_security: {mode: tls}
  upstream: {backends: [\"127.0.0.1:1\"]}
";

    #[test]
    fn a_minimal_config_parses_with_defaults() {
        let loaded = parse(Path::new("/etc/edge/t.yaml"), MINIMAL).expect("valid");
        let config = &loaded.config;
        assert_eq!(config.runtime.io_driver, IoDriverChoice::Auto);
        assert_eq!(
            config.ingress.as_ref().unwrap().server_tls.min_version,
            TlsVersion::Tls12
        );
        assert_eq!(
            loaded.resolve(Path::new("c.pem")),
            Path::new("/etc/edge/c.pem")
        );
    }

    #[test]
    fn every_unknown_field_is_reported_with_its_line() {
        let text = MINIMAL.replace("hostname: a.example", "hostname: a.example\n  colour: red")
            + "extra: 1\n";
        let problems = problems_of(&text);
        let paths: Vec<_> = problems.iter().map(|p| (p.path.as_str(), p.line)).collect();
        assert!(paths.contains(&("ingress.colour", Some(4))), "{problems:?}");
        assert!(paths.contains(&("extra", Some(8))), "{problems:?}");
    }

    #[test]
    fn a_deeply_nested_file_is_refused_before_it_exhausts_the_stack() {
        let nested = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let text = MINIMAL.replace(
            "{mode: tls}",
            &format!("{{mode: mtls, client_ca_cert: {nested}}}"),
        );
        let parsing = std::thread::Builder::new()
            .stack_size(2 * 1024 * 1024)
            .spawn(move || problems_of(&text))
            .expect("a thread");
        let problems = parsing.join().expect("no stack overflow");
        assert!(problems[0].message.contains("depth"), "{problems:?}");
    }

    #[test]
    fn a_leeway_beyond_an_hour_is_refused() {
        let text = MINIMAL.replace(
            "  upstream:",
            "  application_auth: {type: jwt, issuer: i, audience: a, jwks_file: k.json, \
             leeway: 100years}\n  upstream:",
        );
        let loaded = parse(Path::new("t.yaml"), &text).expect("parses");
        let mut problems = loaded.problems();
        check_values(&loaded.config, &mut problems);
        let error = problems.into_error();
        assert_eq!(error.problems[0].path, "ingress.application_auth.leeway");
    }

    #[test]
    fn a_wrong_type_names_its_field_and_line() {
        let text = MINIMAL.replace("{mode: tls}", "{mode: sometimes}");
        let problems = problems_of(&text);
        assert_eq!(problems[0].path, "ingress.transport_security.mode");
        assert_eq!(problems[0].line, Some(5));
    }
}
