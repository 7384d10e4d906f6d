//! `CREATE EXTERNAL TABLE name [(columns)] OPTIONS (format = ..., uris =
//! [...])`: a table whose rows are files read in place ([`crate::external`]).

use super::*;
use quarry_common::catalog::ExternalSource;

impl Session {
    /// Creates an external table: its columns as given, or as the files'
    /// first one says, and the table and its source in one command.
    ///
    /// # Errors
    /// 42501 for a role that is not a superuser; 58P01 when a uri names no
    /// file; 0A000 for a file column of a type Quarry cannot store; 42P07
    /// for a name in use (unless IF NOT EXISTS).
    pub(super) async fn create_external_table(
        &mut self,
        name: &ObjectName,
        if_not_exists: bool,
        columns: &[ast::ColumnDef],
        source: ExternalSource,
    ) -> Result<Output> {
        let done = || Ok(Output::Command(CommandTag::new("CREATE EXTERNAL TABLE")));
        // Privileges are checked against the catalog this statement reads.
        let view = self.begin_statement().await?;
        if !self.access().await?.is_superuser() {
            return Err(user_error(
                SqlState::INSUFFICIENT_PRIVILEGE,
                "must be superuser to create an external table over files on the server",
            ));
        }
        crate::external::check_source(&source)?;
        let (schema, table) = self.resolve(name)?;
        if if_not_exists && view.catalog.relation_exists(&schema, &table) {
            return done();
        }
        // The files must exist now, whether or not the columns are given.
        crate::external::resolve_files(&source.uris, "CREATE EXTERNAL TABLE")?;
        let mut defs = Vec::with_capacity(columns.len());
        let mut declared = Vec::new();
        if columns.is_empty() {
            let files = crate::external::infer_schema(&self.ctx.state(), &source).await?;
            for field in files.fields() {
                defs.push(ColumnDef {
                    name: field.name().clone(),
                    column_type: column_type_of(field.data_type()).map_err(|e| {
                        user_error(
                            e.sqlstate(),
                            format!("column \"{}\" of the files: {e}", field.name()),
                        )
                    })?,
                    nullable: true,
                    default: None,
                });
            }
        } else {
            for column in columns {
                let mut def = self
                    .column_def(&view.catalog, column, &mut declared)
                    .await?;
                if def.default.is_some() {
                    return Err(user_error(
                        SqlState::FEATURE_NOT_SUPPORTED,
                        "a column of an external table has no default",
                    ));
                }
                // The files decide: a missing value reads as NULL.
                def.nullable = true;
                defs.push(def);
            }
        }
        let declared = (!declared.is_empty()).then(|| Command::DeclareTypes {
            schema: schema.clone(),
            table: table.clone(),
            fields: declared,
        });
        let mut commands = vec![
            Command::CreateTable {
                schema: schema.clone(),
                name: table.clone(),
                columns: defs,
                if_not_exists: false,
                files: Vec::new(),
                retention_micros: None,
                field_ids: Vec::new(),
                layout: None,
                stripes: Vec::new(),
            },
            Command::SetExternalSource {
                schema,
                name: table,
                source,
            },
        ];
        commands.extend(declared);
        self.write_ddl(Command::Batch(commands)).await?;
        done()
    }
}
