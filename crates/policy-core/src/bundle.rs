//! Loading, validating and indexing a policy bundle.
//!
//! A bundle is a set of files (the caller reads them; this crate does no IO):
//! `*.cedar` policies, an optional `schema.cedarschema` that replaces the
//! built-in schema, and an optional `entities.json`. Loading validates all
//! of it and yields an immutable [`Bundle`] with a content hash.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::str::FromStr;
use std::sync::{Arc, RwLock};

use cedar_policy::{
    ActionConstraint, Effect, Entities, Entity, EntityId, EntityTypeName, EntityUid, Policy,
    PolicyId, PolicySet, PrincipalConstraint, ResourceConstraint, RestrictedExpression, Schema,
    SchemaFragment, ValidationMode, ValidationWarning, Validator,
};
use sha2::{Digest, Sha256};

use crate::config::{BundleConfig, CONFIG_FILE};
use crate::error::{BundleError, Diagnostic, from_miette};
use crate::event::ACTIONS;

/// The built-in schema, used when a bundle has no `schema.cedarschema`.
pub const BUILTIN_SCHEMA: &str = include_str!("builtin.cedarschema");

/// Cedar namespace of every Gatehouse type and action.
pub const NAMESPACE: &str = "Gatehouse";

const SCHEMA_FILE: &str = "schema.cedarschema";
const ENTITIES_FILE: &str = "entities.json";

/// One file of a bundle, with its path relative to the bundle root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct BundleFile {
    pub path: String,
    pub content: String,
}

/// The type of a context field the context builder knows how to fill.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FieldType {
    String,
    Long,
    Bool,
    SetOfString,
}

/// What Gatehouse knows about one policy besides its Cedar text.
#[derive(Debug, Clone)]
pub(crate) struct PolicyInfo {
    pub(crate) file: String,
    pub(crate) effect: Effect,
    pub(crate) ask: bool,
    pub(crate) reason: Option<String>,
}

/// The policies of one action, sliced by scope so that Cedar only sees the
/// policies that can apply to an event.
///
/// A policy whose resource scope names one resource exactly (`resource ==
/// R`) is only handed to Cedar for R. A policy whose principal scope names an
/// entity (`principal == A`, `principal in G`, `principal is T in G`) is only
/// handed to Cedar for principals that are that entity or are in it (the
/// principal's ancestors come from `entities.json` alone, so this is known
/// at load time). Every slice is a superset of the policies that can apply:
/// Cedar still checks each scope.
#[derive(Debug, Default)]
pub(crate) struct ActionIndex {
    /// Policies with no principal entity in scope whose resource scope is
    /// not a single resource.
    pub(crate) general: PolicySet,
    /// For each resource named with `==`: `general` plus those policies.
    pub(crate) by_resource: HashMap<EntityUid, PolicySet>,
    /// Policies whose principal scope names an entity, by that entity.
    pub(crate) by_principal: HashMap<EntityUid, Vec<Policy>>,
    /// Resources named with `==` by the policies in `by_principal`.
    pub(crate) principal_resources: HashSet<EntityUid>,
    /// Merged slices for principals that some scoped policy names, made
    /// on first use. The keys are bounded by the bundle (its named
    /// principals and resources), and by `MERGED_CAP` besides.
    pub(crate) merged: RwLock<HashMap<SliceKey, Arc<PolicySet>>>,
}

/// A principal, and the resource when some `==` scope names it.
type SliceKey = (EntityUid, Option<EntityUid>);

/// Most merged slices one action keeps; past it a slice is built per call.
const MERGED_CAP: usize = 4096;

/// The policies handed to Cedar for one event.
#[derive(Debug, Clone)]
pub(crate) enum Slice<'a> {
    Static(&'a PolicySet),
    Merged(Arc<PolicySet>),
}

impl std::ops::Deref for Slice<'_> {
    type Target = PolicySet;
    fn deref(&self) -> &PolicySet {
        match self {
            Self::Static(s) => s,
            Self::Merged(s) => s,
        }
    }
}

impl ActionIndex {
    /// The policies that can apply to `resource`, for a principal no
    /// scoped policy names.
    fn resource_slice(&self, resource: Option<&EntityUid>) -> &PolicySet {
        resource
            .and_then(|r| self.by_resource.get(r))
            .unwrap_or(&self.general)
    }

    /// The policies that can apply to an event of `principal` (with its
    /// `ancestors` from the bundle's entities) on `resource`.
    pub(crate) fn slice<'a>(
        &'a self,
        principal: Option<&EntityUid>,
        ancestors: Option<&HashSet<EntityUid>>,
        resource: Option<&EntityUid>,
    ) -> Slice<'a> {
        let scope_keys = principal.into_iter().chain(ancestors.into_iter().flatten());
        let Some(principal) = principal else {
            return Slice::Static(self.resource_slice(resource));
        };
        if self.by_principal.is_empty()
            || !scope_keys
                .clone()
                .any(|k| self.by_principal.contains_key(k))
        {
            return Slice::Static(self.resource_slice(resource));
        }
        let named = resource
            .filter(|r| self.by_resource.contains_key(*r) || self.principal_resources.contains(*r));
        let key = (principal.clone(), named.cloned());
        if let Some(hit) = self.merged.read().ok().and_then(|m| m.get(&key).cloned()) {
            return Slice::Merged(hit);
        }
        let mut set = self.resource_slice(named).clone();
        for k in scope_keys {
            for p in self.by_principal.get(k).into_iter().flatten() {
                let applies = match p.resource_constraint() {
                    ResourceConstraint::Eq(r) => named == Some(&r),
                    _ => true,
                };
                // A policy reached through two keys is added once; ids are
                // unique, so a second add only reports the duplicate.
                if applies && set.policy(p.id()).is_none() {
                    let _ = set.add(p.clone());
                }
            }
        }
        let set = Arc::new(set);
        if let Ok(mut m) = self.merged.write()
            && m.len() < MERGED_CAP
        {
            m.insert(key, Arc::clone(&set));
        }
        Slice::Merged(set)
    }
}

/// An entity from `entities.json`, with its ancestors flattened.
#[derive(Debug, Clone)]
pub(crate) struct StoredEntity {
    pub(crate) attrs: HashMap<String, RestrictedExpression>,
    pub(crate) ancestors: HashSet<EntityUid>,
}

#[derive(Debug, Clone)]
pub(crate) struct TypeNames {
    pub(crate) agent: EntityTypeName,
    pub(crate) tool: EntityTypeName,
    pub(crate) tool_group: EntityTypeName,
    pub(crate) package: EntityTypeName,
    pub(crate) model: EntityTypeName,
    pub(crate) memory: EntityTypeName,
    pub(crate) session: EntityTypeName,
    pub(crate) action: EntityTypeName,
}

/// A validated, compiled and indexed policy bundle. Immutable: share it
/// behind an `Arc` and swap the whole bundle to reload.
#[derive(Debug)]
pub struct Bundle {
    pub(crate) hash: String,
    pub(crate) files: Vec<BundleFile>,
    pub(crate) policies: HashMap<PolicyId, PolicyInfo>,
    pub(crate) policy_count: usize,
    /// Policies that can apply, per action and resource (the index that
    /// decides what Cedar evaluates).
    pub(crate) by_action: HashMap<String, ActionIndex>,
    pub(crate) entities: HashMap<EntityUid, StoredEntity>,
    pub(crate) input_fields: Vec<(String, FieldType)>,
    pub(crate) metadata_fields: Vec<(String, FieldType)>,
    pub(crate) types: TypeNames,
    pub(crate) config: BundleConfig,
    pub(crate) warnings: Vec<Diagnostic>,
    /// The top-level `context` fields some policy file spells (every field
    /// when any policy file holds a string escape). A field no policy can
    /// name cannot change a decision, so it is not built (nor, for
    /// `shell`, is the command parsed).
    pub(crate) context_reads: crate::engine::ContextReads,
    /// Some policy or entity names `ToolGroup` (so tools get their
    /// built-in groups as parents).
    pub(crate) uses_tool_groups: bool,
    /// The schema's fragments in JSON form (the bundle's or the built-in
    /// one with MCP arguments, then the matchers), for `compiled`.
    pub(crate) schema_json: Vec<serde_json::Value>,
    /// The entity sets requests were decided against, by what they were
    /// built from (see `engine::EntityKey`): building one (Cedar computes
    /// its transitive closure) cost a fifth of a decision. Bounded by
    /// `ENTITY_SETS_CAP`; past it a set is built per call.
    pub(crate) entity_sets: RwLock<HashMap<crate::engine::EntityKey, Arc<cedar_policy::Entities>>>,
}

/// Most entity sets a bundle keeps.
pub(crate) const ENTITY_SETS_CAP: usize = 1024;

/// Version of [`CompiledBundle`]'s form; an entry of another is ignored.
pub const COMPILED_FORMAT: u32 = 1;

/// What a successful load established about a bundle's files, so that a
/// later load of the same files (same hash) can skip parsing the schema
/// text and validating the policies. Whoever stores it must store it where
/// only those who may write the bundle can write: it is trusted as the
/// bundle's own (see `bundle_dir::load_cached`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct CompiledBundle {
    pub format: u32,
    /// The content hash of the files it was made from.
    pub hash: String,
    /// The schema's fragments, in JSON form.
    pub schema: Vec<serde_json::Value>,
    /// The load's warnings.
    pub warnings: Vec<Diagnostic>,
    /// `entities.json` as parsed against the schema, in Cedar's explicit
    /// JSON form (entity references and extension values spelled out), so
    /// that it parses to the same entities without the schema.
    pub entities: serde_json::Value,
    /// SHA-256 over everything above: an entry damaged on disk (but still
    /// JSON) is not used.
    pub digest: String,
}

impl CompiledBundle {
    fn compute_digest(&self) -> String {
        let body = serde_json::json!([
            self.format,
            self.hash,
            self.schema,
            self.warnings,
            self.entities
        ]);
        hex::encode(Sha256::digest(body.to_string().as_bytes()))
    }
}

impl Bundle {
    /// Validates and compiles a bundle from its files.
    pub fn load(files: impl IntoIterator<Item = BundleFile>) -> Result<Self, BundleError> {
        Self::load_inner(files, None)
    }

    /// Compiles a bundle whose files an earlier load already validated, as
    /// `compiled` records: the schema is not built (nothing after
    /// validation needs it: the context's fields come from its JSON form and
    /// the entities from their explicit form) and the policies are not
    /// validated again. When `compiled` is of other files (another hash),
    /// of another format, damaged (its digest does not match) or does not
    /// serve, this is `load`.
    pub fn load_compiled(
        files: impl IntoIterator<Item = BundleFile>,
        compiled: &CompiledBundle,
    ) -> Result<Self, BundleError> {
        let files: Vec<BundleFile> = files.into_iter().collect();
        // An entry that does not serve is no reason to refuse valid files.
        Self::load_inner(files.clone(), Some(compiled)).or_else(|_| Self::load_inner(files, None))
    }

    /// What this load established, for `load_compiled`; `None` when some
    /// of it cannot be written down whole (then nothing should be cached:
    /// an entity left out would drop its groups' policies).
    pub fn compiled(&self) -> Option<CompiledBundle> {
        let mut c = CompiledBundle {
            format: COMPILED_FORMAT,
            hash: self.hash.clone(),
            schema: self.schema_json.clone(),
            warnings: self.warnings.clone(),
            entities: self.entities_json()?,
            digest: String::new(),
        };
        c.digest = c.compute_digest();
        Some(c)
    }

    /// The bundle's entities in Cedar's explicit JSON form, every one.
    fn entities_json(&self) -> Option<serde_json::Value> {
        let entities: Option<Vec<Entity>> = self
            .entities
            .iter()
            .map(|(uid, e)| Entity::new(uid.clone(), e.attrs.clone(), e.ancestors.clone()).ok())
            .collect();
        Entities::from_entities(entities?, None)
            .ok()?
            .to_json_value()
            .ok()
    }

    fn load_inner(
        files: impl IntoIterator<Item = BundleFile>,
        prior: Option<&CompiledBundle>,
    ) -> Result<Self, BundleError> {
        let mut files: Vec<BundleFile> = files.into_iter().collect();
        files.sort();
        let hash = content_hash(&files);
        // A prior compilation of exactly these files, undamaged.
        let prior = prior.filter(|c| {
            c.format == COMPILED_FORMAT && c.hash == hash && c.digest == c.compute_digest()
        });
        let mut diags = Vec::new();
        let mut warnings = Vec::new();

        // Schema: the bundle's own, or the built-in one.
        let (schema_file, schema_text) = match files.iter().find(|f| f.path == SCHEMA_FILE) {
            Some(f) => (f.path.as_str(), f.content.as_str()),
            None => ("<builtin>/schema.cedarschema", BUILTIN_SCHEMA),
        };
        // bundle.toml first: the schema includes the matchers it declares.
        let config = match files.iter().find(|f| f.path == CONFIG_FILE) {
            Some(f) => match crate::config::parse(&f.content) {
                Ok((config, w)) => {
                    warnings.extend(w);
                    config
                }
                Err(errs) => {
                    diags.extend(errs);
                    BundleConfig::default()
                }
            },
            None => BundleConfig {
                max_limit_keys: crate::config::DEFAULT_MAX_LIMIT_KEYS,
                ..BundleConfig::default()
            },
        };
        // MCP servers' tool lists: their arguments become ToolInput fields.
        let mut servers = BTreeMap::new();
        for f in &files {
            if let Some(server) = crate::mcp::server_of(&f.path) {
                match crate::mcp::parse(server, &f.content) {
                    Ok(parsed) => {
                        servers.insert(server.to_owned(), (f.path.clone(), parsed));
                    }
                    Err(msg) => diags.push(whole_file(&f.path, msg)),
                }
            }
        }
        let compiled = match prior {
            Some(c) => Some((None, c.schema.clone())),
            None => compile_schema(schema_file, schema_text, &config, &servers, &mut diags)
                .map(|(schema, json)| (Some(schema), json)),
        };

        // Policies, each re-keyed by its @id.
        let mut policies = HashMap::new();
        let mut all: Vec<Policy> = Vec::new();
        let mut seen_ids: HashMap<String, String> = HashMap::new();
        for file in files.iter().filter(|f| f.path.ends_with(".cedar")) {
            parse_policy_file(file, &mut all, &mut policies, &mut seen_ids, &mut diags);
        }
        for file in &files {
            let known = file.path.ends_with(".cedar")
                || crate::mcp::server_of(&file.path).is_some()
                || file.path == CONFIG_FILE
                || file.path == SCHEMA_FILE
                || file.path == ENTITIES_FILE
                || file.path.ends_with(".md")
                || file.path.ends_with(".toml");
            if !known {
                warnings.push(Diagnostic {
                    file: file.path.clone(),
                    line: 0,
                    column: 0,
                    message: "file ignored: not a policy, schema or entities file".into(),
                });
            }
        }

        let mut set = PolicySet::new();
        for p in &all {
            if let Err(e) = set.add(p.clone()) {
                diags.push(Diagnostic {
                    file: policies
                        .get(p.id())
                        .map_or(String::new(), |i: &PolicyInfo| i.file.clone()),
                    line: 0,
                    column: 0,
                    message: e.to_string(),
                });
            }
        }

        let mut entities = HashMap::new();
        let mut input_fields = Vec::new();
        let mut metadata_fields = Vec::new();
        if let Some((schema, fragments)) = &compiled {
            let fragment_json = fragments.first().unwrap_or(&serde_json::Value::Null);
            // Strict validation of every policy against the schema, unless
            // these files were validated before.
            let result = schema.as_ref().map(|schema| {
                Validator::new(schema.clone()).validate(&set, ValidationMode::Strict)
            });
            let errors = result.iter().flat_map(|r| r.validation_errors());
            for err in errors {
                let info = policies.get(err.policy_id());
                let (file, text) = locate(&files, info);
                diags.push(from_miette(
                    &file,
                    text,
                    err,
                    &format!("policy `{}`: ", err.policy_id()),
                ));
            }
            match declared_fields(fragment_json, "ToolInput") {
                Ok(f) => input_fields = f,
                Err(msg) => diags.push(whole_file(schema_file, msg)),
            }
            for warn in result.iter().flat_map(|r| r.validation_warnings()) {
                let info = policies.get(warn.policy_id());
                let (file, text) = locate(&files, info);
                let never_applies = matches!(
                    warn,
                    ValidationWarning::ImpossiblePolicy(_)
                        | ValidationWarning::InvalidActionApplication(_)
                );
                match info {
                    // A forbid (asks included) that can never apply is a
                    // silent hole in the guard rails: refuse the bundle.
                    Some(i) if never_applies && i.effect == Effect::Forbid => {
                        let source = all
                            .iter()
                            .find(|p| p.id() == warn.policy_id())
                            .map(ToString::to_string)
                            .unwrap_or_default();
                        let hint = dead_policy_hint(&source, &input_fields, &servers);
                        diags.push(from_miette(
                            &file,
                            text,
                            warn,
                            &format!(
                                "forbid `{}` can never apply, so it would guard nothing{hint}: ",
                                warn.policy_id()
                            ),
                        ));
                    }
                    // A permit that can never apply fails closed (what it
                    // meant to allow stays denied): a warning.
                    Some(_) if never_applies => warnings.push(from_miette(
                        &file,
                        text,
                        warn,
                        &format!(
                            "warning: permit `{}` can never apply (what it allows stays denied): ",
                            warn.policy_id()
                        ),
                    )),
                    _ => warnings.push(from_miette(&file, text, warn, "warning: ")),
                }
            }
            match declared_fields(fragment_json, "Metadata") {
                Ok(f) => metadata_fields = f,
                Err(msg) => diags.push(whole_file(schema_file, msg)),
            }
            match (schema, prior) {
                (Some(schema), _) => {
                    if let Some(f) = files.iter().find(|f| f.path == ENTITIES_FILE) {
                        match Entities::from_json_str(&f.content, Some(schema)) {
                            Ok(parsed) => entities = flatten_entities(parsed),
                            Err(e) => diags.push(from_miette(&f.path, &f.content, &e, "")),
                        }
                    }
                }
                (None, Some(c)) => match Entities::from_json_value(c.entities.clone(), None) {
                    Ok(parsed) => entities = flatten_entities(parsed),
                    Err(e) => diags.push(whole_file(ENTITIES_FILE, format!("compiled: {e}"))),
                },
                (None, None) => {}
            }
        }

        if !diags.is_empty() {
            return Err(BundleError {
                diagnostics: diags,
                warnings,
            });
        }

        if let Some(c) = prior {
            warnings.clone_from(&c.warnings);
        }
        let schema_json = compiled.map(|(_, json)| json).unwrap_or_default();
        let types = type_names();
        let by_action = index_by_action(&all, &types);
        // What the policies can read, from their source (see
        // `ContextReads`). Type names have no escapes.
        let cedar_text = || files.iter().filter(|f| f.path.ends_with(".cedar"));
        let context_reads = crate::engine::ContextReads::from_sources(
            &cedar_text().map(|f| f.content.as_str()).collect::<Vec<_>>(),
        );
        let uses_tool_groups = cedar_text().any(|f| f.content.contains("ToolGroup"))
            || files
                .iter()
                .any(|f| f.path == ENTITIES_FILE && f.content.contains("ToolGroup"));
        Ok(Self {
            context_reads,
            uses_tool_groups,
            hash,
            files,
            policy_count: all.len(),
            policies,
            by_action,
            entities,
            input_fields,
            metadata_fields,
            types,
            config,
            warnings,
            schema_json,
            entity_sets: RwLock::default(),
        })
    }

    /// Hex SHA-256 over the bundle's files (paths and contents).
    pub fn hash(&self) -> &str {
        &self.hash
    }

    /// The source files, sorted by path (what the server pushes to clients).
    pub fn files(&self) -> &[BundleFile] {
        &self.files
    }

    /// How many policies the bundle holds.
    pub fn policy_count(&self) -> usize {
        self.policy_count
    }

    /// Non-fatal findings (Cedar validation warnings, ignored files).
    pub fn warnings(&self) -> &[Diagnostic] {
        &self.warnings
    }

    /// Why activating `next` in place of this bundle looks like a
    /// half-written file: forbids (asks included) of this bundle that `next`
    /// drops while the file that held them is, in `next`, empty of policies
    /// or a truncation of its old content. `None` when it does not.
    pub fn truncation_hazard(&self, next: &Bundle) -> Option<String> {
        let mut lost: Vec<(String, String)> = Vec::new();
        for (id, info) in &self.policies {
            if info.effect != Effect::Forbid || next.policies.contains_key(id) {
                continue;
            }
            let Some(new) = next.files.iter().find(|f| f.path == info.file) else {
                // The whole file was removed: a deliberate deletion.
                continue;
            };
            let old = self
                .files
                .iter()
                .find(|f| f.path == info.file)
                .map_or("", |f| f.content.as_str());
            let emptied = !next.policies.values().any(|i| i.file == info.file);
            let truncated = new.content.len() < old.len() && old.starts_with(new.content.as_str());
            if emptied || truncated {
                lost.push((info.file.clone(), id.to_string()));
            }
        }
        if lost.is_empty() {
            return None;
        }
        lost.sort();
        let list: Vec<String> = lost.iter().map(|(f, id)| format!("{id} ({f})")).collect();
        Some(format!(
            "the new bundle drops forbid {} while its file is empty or truncated: \
             a half-written file; keeping the current bundle",
            list.join(", ")
        ))
    }
}

/// Hex SHA-256 over sorted files; identical on every path that loads them.
pub fn content_hash(files: &[BundleFile]) -> String {
    let mut h = Sha256::new();
    for f in files {
        h.update((f.path.len() as u64).to_le_bytes());
        h.update(f.path.as_bytes());
        h.update((f.content.len() as u64).to_le_bytes());
        h.update(f.content.as_bytes());
    }
    hex::encode(h.finalize())
}

fn whole_file(file: &str, message: String) -> Diagnostic {
    Diagnostic {
        file: file.to_owned(),
        line: 0,
        column: 0,
        message,
    }
}

fn locate<'a>(files: &'a [BundleFile], info: Option<&PolicyInfo>) -> (String, &'a str) {
    match info.and_then(|i| files.iter().find(|f| f.path == i.file)) {
        Some(f) => (f.path.clone(), f.content.as_str()),
        None => (String::from("<unknown>"), ""),
    }
}

fn compile_schema(
    file: &str,
    text: &str,
    config: &BundleConfig,
    servers: &BTreeMap<String, (String, crate::mcp::McpServer)>,
    diags: &mut Vec<Diagnostic>,
) -> Option<(Schema, Vec<serde_json::Value>)> {
    let fragment = match SchemaFragment::from_cedarschema_str(text) {
        Ok((fragment, _warnings)) => fragment,
        Err(e) => {
            diags.push(from_miette(file, text, &e, "schema: "));
            return None;
        }
    };
    let mut json = match fragment.to_json_value() {
        Ok(json) => json,
        Err(e) => {
            diags.push(whole_file(file, format!("schema: {e}")));
            return None;
        }
    };
    // The text is parsed once: its JSON form (extended with MCP arguments)
    // is what the schema is built from, at a seventh of the cost.
    let main = {
        if !servers.is_empty() {
            let declared = declared_fields(&json, "ToolInput").unwrap_or_default();
            let errors = crate::mcp::extend_tool_input(&mut json, NAMESPACE, servers, &declared);
            if !errors.is_empty() {
                diags.extend(errors.into_iter().map(|(f, m)| whole_file(&f, m)));
                return None;
            }
        }
        match SchemaFragment::from_json_value(json.clone()) {
            Ok(f) => f,
            Err(e) => {
                diags.push(whole_file(file, format!("schema with MCP arguments: {e}")));
                return None;
            }
        }
    };
    let generated = crate::config::matchers_schema(config);
    let matchers = SchemaFragment::from_cedarschema_str(&generated)
        .map_err(|e| e.to_string())
        .and_then(|(f, _)| f.to_json_value().map_err(|e| e.to_string()));
    let (matchers, matchers_json) = match matchers.and_then(|j| {
        Ok((
            SchemaFragment::from_json_value(j.clone()).map_err(|e| e.to_string())?,
            j,
        ))
    }) {
        Ok(m) => m,
        Err(e) => {
            diags.push(whole_file(CONFIG_FILE, format!("matchers: {e}")));
            return None;
        }
    };
    match Schema::from_schema_fragments([main, matchers]) {
        Ok(schema) => Some((schema, vec![json, matchers_json])),
        Err(e) => {
            // Errors carry source locations only from the text form, so
            // the text is built again to report them where they are.
            let located = servers
                .is_empty()
                .then(|| {
                    let (text_main, _) = SchemaFragment::from_cedarschema_str(text).ok()?;
                    let (matchers, _) = SchemaFragment::from_cedarschema_str(&generated).ok()?;
                    Schema::from_schema_fragments([text_main, matchers]).err()
                })
                .flatten();
            diags.push(from_miette(
                file,
                text,
                located.as_ref().unwrap_or(&e),
                "schema: ",
            ));
            None
        }
    }
}

fn parse_policy_file(
    file: &BundleFile,
    all: &mut Vec<Policy>,
    infos: &mut HashMap<PolicyId, PolicyInfo>,
    seen_ids: &mut HashMap<String, String>,
    diags: &mut Vec<Diagnostic>,
) {
    let set = match PolicySet::from_str(&file.content) {
        Ok(set) => set,
        Err(errs) => {
            for e in errs.iter() {
                diags.push(from_miette(&file.path, &file.content, e, ""));
            }
            return;
        }
    };
    if set.templates().next().is_some() {
        diags.push(whole_file(
            &file.path,
            "policy templates are not supported in bundles".into(),
        ));
    }
    // PolicySet::from_str numbers policies policy0, policy1, ... in source
    // order; keep that order for stable default ids.
    let mut parsed: Vec<&Policy> = set.policies().collect();
    parsed.sort_by_key(|p| {
        p.id()
            .to_string()
            .trim_start_matches("policy")
            .parse::<usize>()
            .unwrap_or(usize::MAX)
    });
    for (index, policy) in parsed.into_iter().enumerate() {
        let id = policy
            .annotations()
            .find_map(|(k, v)| (k == "id").then_some(v))
            .map_or_else(|| format!("{}#{index}", file.path), str::to_owned);
        if let Some(prev) = seen_ids.insert(id.clone(), file.path.clone()) {
            diags.push(whole_file(
                &file.path,
                format!("duplicate policy id `{id}` (also in {prev})"),
            ));
            continue;
        }
        // By iterating: `Policy::annotation` parses its key as an
        // identifier, with a lexer built per call.
        let ask = policy.annotations().any(|(k, _)| k == "ask");
        if ask && policy.effect() == Effect::Permit {
            diags.push(whole_file(
                &file.path,
                format!("policy `{id}`: @ask is only meaningful on a forbid"),
            ));
        }
        let pid = PolicyId::new(&id);
        infos.insert(
            pid.clone(),
            PolicyInfo {
                file: file.path.clone(),
                effect: policy.effect(),
                ask,
                reason: policy
                    .annotations()
                    .find_map(|(k, v)| (k == "reason").then(|| v.to_owned())),
            },
        );
        all.push(policy.new_id(pid));
    }
}

/// Why a policy can never apply, in the author's terms: the `context.input`
/// fields it tests that the schema does not declare, with the closest
/// declared name (a typo) or the MCP tool list to add.
fn dead_policy_hint(
    source: &str,
    declared: &[(String, FieldType)],
    servers: &BTreeMap<String, (String, crate::mcp::McpServer)>,
) -> String {
    let field =
        regex::Regex::new(r#"context\.input\s*(?:has\s+"?|\.|\[")([A-Za-z_][A-Za-z0-9_]*)"#);
    let server = regex::Regex::new(
        r#"(?:resource\.server\s*==\s*"|Tool::"mcp__)([A-Za-z0-9_.-]+?)(?:"|__)"#,
    );
    let (Ok(field), Ok(server)) = (field, server) else {
        return String::new();
    };
    let mut unknown: Vec<&str> = field
        .captures_iter(source)
        .filter_map(|c| c.get(1).map(|m| m.as_str()))
        .filter(|name| !declared.iter().any(|(d, _)| d == name))
        .collect();
    unknown.sort_unstable();
    unknown.dedup();
    if unknown.is_empty() {
        return String::new();
    }
    let server_name = server
        .captures(source)
        .and_then(|c| c.get(1))
        .map_or("<server>", |m| m.as_str());
    let mut parts = Vec::new();
    for name in unknown {
        let close = declared
            .iter()
            .map(|(d, _)| (edit_distance(d, name), d))
            .filter(|(d, _)| *d <= 2)
            .min();
        let mut part = format!("`context.input.{name}` is not a declared input field");
        match close {
            Some((_, d)) => part.push_str(&format!(" (did you mean `{d}`?)")),
            None if !servers.contains_key(server_name) => part.push_str(&format!(
                " (if it is an MCP tool's argument, add mcp/{server_name}.json: the server's \
                 `tools/list` result; `gatehouse schema --mcp FILE` shows what it declares)"
            )),
            None => part.push_str(&format!(" (mcp/{server_name}.json does not declare it)")),
        }
        parts.push(part);
    }
    format!(": {}", parts.join("; "))
}

/// Levenshtein distance, for "did you mean" hints on short names.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur[j + 1] = (prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// The attributes of common type `Gatehouse::<name>` that the context builder
/// can fill. Every one must be optional.
fn declared_fields(
    fragment: &serde_json::Value,
    name: &str,
) -> Result<Vec<(String, FieldType)>, String> {
    let Some(ty) = fragment
        .get(NAMESPACE)
        .and_then(|ns| ns.get("commonTypes"))
        .and_then(|ct| ct.get(name))
    else {
        return Ok(Vec::new());
    };
    let Some(attrs) = ty.get("attributes").and_then(|a| a.as_object()) else {
        return Err(format!("schema: type {NAMESPACE}::{name} must be a record"));
    };
    let mut out = Vec::new();
    for (attr, spec) in attrs {
        let required = spec
            .get("required")
            .and_then(|r| r.as_bool())
            .unwrap_or(true);
        if required {
            return Err(format!(
                "schema: attribute `{attr}` of {NAMESPACE}::{name} must be optional (`{attr}?`): \
                 the fields of an event are never guaranteed"
            ));
        }
        if let Some(t) = field_type(spec) {
            out.push((attr.clone(), t));
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

fn primitive(spec: &serde_json::Value) -> Option<&str> {
    let ty = spec.get("type")?.as_str()?;
    let name = match ty {
        "EntityOrCommon" => spec.get("name")?.as_str()?,
        other => other,
    };
    Some(name.trim_start_matches("__cedar::"))
}

fn field_type(spec: &serde_json::Value) -> Option<FieldType> {
    match primitive(spec)? {
        "String" => Some(FieldType::String),
        "Long" => Some(FieldType::Long),
        "Bool" | "Boolean" => Some(FieldType::Bool),
        "Set" => match primitive(spec.get("element")?)? {
            "String" => Some(FieldType::SetOfString),
            _ => None,
        },
        _ => None,
    }
}

fn flatten_entities(entities: Entities) -> HashMap<EntityUid, StoredEntity> {
    entities
        .iter()
        .map(|e| {
            let (uid, attrs, ancestors) = e.clone().into_inner();
            (uid, StoredEntity { attrs, ancestors })
        })
        .collect()
}

pub(crate) fn type_names() -> TypeNames {
    let t = |n: &str| {
        EntityTypeName::from_str(&format!("{NAMESPACE}::{n}"))
            .unwrap_or_else(|_| unreachable!("built-in type names are valid"))
    };
    TypeNames {
        agent: t("Agent"),
        tool: t("Tool"),
        tool_group: t("ToolGroup"),
        package: t("Package"),
        model: t("Model"),
        memory: t("Memory"),
        session: t("Session"),
        action: t("Action"),
    }
}

pub(crate) fn uid(ty: &EntityTypeName, id: &str) -> EntityUid {
    EntityUid::from_type_name_and_id(ty.clone(), EntityId::new(id))
}

/// Slices the policy set by action scope, then by principal and exact
/// resource scope. A policy lands in an action's slice when its action
/// scope is unconstrained or names that action; a scope naming an action
/// group Gatehouse does not know lands everywhere. Within an action, a
/// policy whose principal scope names an entity is kept under that entity;
/// of the rest, a `resource == R` policy is only in R's slice and every
/// other policy is in every slice. So slicing never drops a policy that
/// could apply.
fn index_by_action(all: &[Policy], types: &TypeNames) -> HashMap<String, ActionIndex> {
    let known: BTreeMap<EntityUid, &str> = ACTIONS
        .iter()
        .map(|a| (uid(&types.action, a), *a))
        .collect();
    let mut per_action: HashMap<&str, Vec<&Policy>> = HashMap::new();
    for p in all {
        let targets: Vec<&str> = match p.action_constraint() {
            ActionConstraint::Any => ACTIONS.to_vec(),
            ActionConstraint::Eq(a) => known.get(&a).copied().into_iter().collect(),
            ActionConstraint::In(list) => {
                if list.iter().all(|a| known.contains_key(a)) {
                    list.iter().filter_map(|a| known.get(a).copied()).collect()
                } else {
                    ACTIONS.to_vec()
                }
            }
        };
        for t in targets {
            per_action.entry(t).or_default().push(p);
        }
    }
    ACTIONS
        .iter()
        .map(|action| {
            let policies = per_action.remove(action).unwrap_or_default();
            let mut index = ActionIndex::default();
            let mut exact: HashMap<EntityUid, Vec<&Policy>> = HashMap::new();
            for p in &policies {
                if let Some(scope) = principal_scope(p) {
                    if let ResourceConstraint::Eq(r) = p.resource_constraint() {
                        index.principal_resources.insert(r);
                    }
                    index
                        .by_principal
                        .entry(scope)
                        .or_default()
                        .push((*p).clone());
                    continue;
                }
                match p.resource_constraint() {
                    ResourceConstraint::Eq(r) => exact.entry(r).or_default().push(p),
                    _ => {
                        // Ids are unique in the bundle, so adding cannot fail.
                        let _ = index.general.add((*p).clone());
                    }
                }
            }
            for (resource, extra) in exact {
                let mut set = index.general.clone();
                for p in extra {
                    let _ = set.add(p.clone());
                }
                index.by_resource.insert(resource, set);
            }
            ((*action).to_owned(), index)
        })
        .collect()
}

/// The entity a policy's principal scope names, if it names one: the
/// policy can only apply to that entity and to what is in it.
fn principal_scope(p: &Policy) -> Option<EntityUid> {
    match p.principal_constraint() {
        PrincipalConstraint::Eq(e)
        | PrincipalConstraint::In(e)
        | PrincipalConstraint::IsIn(_, e) => Some(e),
        PrincipalConstraint::Any | PrincipalConstraint::Is(_) => None,
    }
}
