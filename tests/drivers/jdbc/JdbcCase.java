// PostgreSQL's JDBC driver (Debian's libpostgresql-jdbc-java) against one
// server: statements, prepared statements, batches, a fetch size that pages
// a result through a portal, DatabaseMetaData, and arrays through
// setArray / getArray. Run by
// tests/drivers/suite.py as `java -cp postgresql.jar JdbcCase.java URL USER`;
// exits non-zero on any mismatch.
import java.math.BigDecimal;
import java.sql.*;
import java.util.*;

public class JdbcCase {
    static void check(boolean ok, String what) {
        if (!ok) throw new AssertionError(what);
    }

    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        try (Connection c = DriverManager.getConnection(args[0], props)) {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE jd (id BIGINT NOT NULL, name TEXT, price NUMERIC(10, 2))");
                try (ResultSet r = s.executeQuery("SELECT 1")) {
                    check(r.next() && r.getInt(1) == 1, "SELECT 1");
                    check(r.getMetaData().getColumnType(1) == Types.INTEGER, "SELECT 1 is int4");
                }
            }
            try (PreparedStatement p = c.prepareStatement("INSERT INTO jd VALUES (?, ?, ?)")) {
                for (int i = 1; i <= 250; i++) {
                    p.setLong(1, i);
                    p.setString(2, i % 2 == 0 ? null : "n" + i);
                    p.setBigDecimal(3, new BigDecimal(i + ".25"));
                    p.addBatch();
                }
                int[] counts = p.executeBatch();
                check(counts.length == 250, "batch of 250");
            }
            c.setAutoCommit(false);
            try (PreparedStatement p = c.prepareStatement(
                    "SELECT id, name, price FROM jd WHERE id > ? ORDER BY id")) {
                p.setFetchSize(40);
                p.setLong(1, 10);
                long sum = 0;
                int rows = 0;
                try (ResultSet r = p.executeQuery()) {
                    while (r.next()) {
                        rows++;
                        sum += r.getLong(1);
                        if (r.getLong(1) == 11) {
                            check("n11".equals(r.getString(2)), "name of 11");
                            check(new BigDecimal("11.25").equals(r.getBigDecimal(3)), "price of 11");
                        }
                    }
                }
                check(rows == 240, "240 rows, got " + rows);
                check(sum == (250L * 251 / 2) - 55, "sum of ids");
            }
            c.commit();
            c.setAutoCommit(true);
            DatabaseMetaData meta = c.getMetaData();
            List<String> tables = new ArrayList<>();
            try (ResultSet r = meta.getTables(null, "public", "%", new String[] {"TABLE"})) {
                while (r.next()) tables.add(r.getString("TABLE_NAME"));
            }
            check(tables.contains("jd"), "getTables lists jd: " + tables);
            List<String> columns = new ArrayList<>();
            try (ResultSet r = meta.getColumns(null, "public", "jd", "%")) {
                while (r.next()) columns.add(r.getString("COLUMN_NAME") + ":" + r.getString("TYPE_NAME"));
            }
            check(columns.equals(List.of("id:int8", "name:text", "price:numeric")),
                  "getColumns: " + columns);
            // Sizes and nullability come from pg_attribute's atttypmod and attnotnull.
            try (ResultSet r = meta.getColumns(null, "public", "jd", "price")) {
                check(r.next(), "getColumns finds price");
                check(r.getInt("COLUMN_SIZE") == 10 && r.getInt("DECIMAL_DIGITS") == 2,
                      "numeric(10,2): " + r.getInt("COLUMN_SIZE") + "," + r.getInt("DECIMAL_DIGITS"));
                check("YES".equals(r.getString("IS_NULLABLE")), "price is nullable");
            }
            try (ResultSet r = meta.getColumns(null, "public", "jd", "id")) {
                check(r.next() && "NO".equals(r.getString("IS_NULLABLE")), "id is NOT NULL");
            }
            Set<String> types = new HashSet<>();
            try (ResultSet r = meta.getTypeInfo()) {
                while (r.next()) types.add(r.getString("TYPE_NAME"));
            }
            check(types.containsAll(List.of("bool", "int4", "int8", "numeric", "text", "date",
                                            "timestamptz", "bytea")), "getTypeInfo: " + types);
            List<String> schemas = new ArrayList<>();
            try (ResultSet r = meta.getSchemas()) {
                while (r.next()) schemas.add(r.getString("TABLE_SCHEM"));
            }
            check(schemas.contains("public") && schemas.contains("pg_catalog"),
                  "getSchemas: " + schemas);
            // Declared keys, as BI tools read them to suggest joins.
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE jd_parent (id BIGINT, code TEXT NOT NULL, "
                          + "PRIMARY KEY (id), CONSTRAINT jd_parent_code UNIQUE (code))");
                s.execute("CREATE TABLE jd_child (id INT PRIMARY KEY, "
                          + "parent_id BIGINT REFERENCES jd_parent (id))");
            }
            List<String> keys = new ArrayList<>();
            try (ResultSet r = meta.getPrimaryKeys(null, "public", "jd_parent")) {
                while (r.next()) {
                    keys.add(r.getString("COLUMN_NAME") + ":" + r.getInt("KEY_SEQ") + ":"
                             + r.getString("PK_NAME"));
                }
            }
            check(keys.equals(List.of("id:1:jd_parent_pkey")), "getPrimaryKeys: " + keys);
            List<String> imported = new ArrayList<>();
            try (ResultSet r = meta.getImportedKeys(null, "public", "jd_child")) {
                while (r.next()) {
                    imported.add(r.getString("PKTABLE_NAME") + "." + r.getString("PKCOLUMN_NAME")
                                 + "<-" + r.getString("FKTABLE_NAME") + "."
                                 + r.getString("FKCOLUMN_NAME") + ":" + r.getString("FK_NAME"));
                }
            }
            check(imported.equals(List.of("jd_parent.id<-jd_child.parent_id:jd_child_parent_id_fkey")),
                  "getImportedKeys: " + imported);
            List<String> exported = new ArrayList<>();
            try (ResultSet r = meta.getExportedKeys(null, "public", "jd_parent")) {
                while (r.next()) exported.add(r.getString("FKTABLE_NAME"));
            }
            check(exported.equals(List.of("jd_child")), "getExportedKeys: " + exported);
            List<String> indexes = new ArrayList<>();
            try (ResultSet r = meta.getIndexInfo(null, "public", "jd_parent", false, false)) {
                while (r.next()) {
                    indexes.add(r.getString("INDEX_NAME") + ":" + r.getString("COLUMN_NAME") + ":"
                                + r.getBoolean("NON_UNIQUE"));
                }
            }
            check(indexes.equals(List.of("jd_parent_code:code:false", "jd_parent_pkey:id:false")),
                  "getIndexInfo: " + indexes);
            List<String> functions = new ArrayList<>();
            try (ResultSet r = meta.getFunctions(null, "pg_catalog", "abs")) {
                while (r.next()) {
                    functions.add(r.getString("FUNCTION_NAME") + ":" + r.getInt("FUNCTION_TYPE"));
                }
            }
            check(functions.size() == 6 && functions.stream().allMatch("abs:1"::equals),
                  "getFunctions: " + functions);
            List<String> arguments = new ArrayList<>();
            try (ResultSet r = meta.getFunctionColumns(null, "pg_catalog", "aclexplode", "%")) {
                while (r.next()) {
                    arguments.add(r.getString("COLUMN_NAME") + ":" + r.getInt("COLUMN_TYPE"));
                }
            }
            check(arguments.size() == 5 && arguments.get(0).equals("acl:1"),
                  "getFunctionColumns: " + arguments);
        }
        // Arrays through setArray / getArray, and a jsonb column.
        try (Connection c = DriverManager.getConnection(args[0], props)) {
            try (Statement s = c.createStatement()) {
                s.execute("CREATE TABLE ja (id BIGINT, tags TEXT[], scores BIGINT[], doc JSONB)");
            }
            try (PreparedStatement p = c.prepareStatement("INSERT INTO ja VALUES (?, ?, ?, ?::jsonb)")) {
                p.setLong(1, 1);
                p.setArray(2, c.createArrayOf("text", new String[] {"a", "b c", null}));
                p.setArray(3, c.createArrayOf("int8", new Long[] {1L, 2L}));
                p.setString(4, "{\"k\": [1, 2]}");
                check(p.executeUpdate() == 1, "insert of arrays");
            }
            try (Statement s = c.createStatement();
                 ResultSet r = s.executeQuery("SELECT tags, scores, doc ->> 'k' FROM ja")) {
                check(r.next(), "a row of arrays");
                Array tags = r.getArray(1);
                Object[] texts = (Object[]) tags.getArray();
                check(Arrays.equals(texts, new String[] {"a", "b c", null}),
                      "getArray of text[]: " + Arrays.toString(texts));
                check(tags.getBaseType() == Types.VARCHAR, "text[] elements are VARCHAR");
                Object[] scores = (Object[]) r.getArray(2).getArray();
                check(Arrays.equals(scores, new Long[] {1L, 2L}),
                      "getArray of bigint[]: " + Arrays.toString(scores));
                check("[1, 2]".equals(r.getString(3)), "doc ->> 'k': " + r.getString(3));
            }
        }
        System.out.println("jdbc: ok");
    }
}
