// PostgreSQL's JDBC driver (Debian's libpostgresql-jdbc-java) over TLS,
// verifying the server's certificate against a CA and its host name
// (sslmode=verify-full). Run by node/tests/tls.rs as
// `java -cp postgresql.jar JdbcTls.java URL USER`; exits non-zero on failure.
import java.sql.*;
import java.util.*;

public class JdbcTls {
    public static void main(String[] args) throws Exception {
        Properties props = new Properties();
        props.setProperty("user", args[1]);
        try (Connection c = DriverManager.getConnection(args[0], props);
             Statement s = c.createStatement();
             ResultSet r = s.executeQuery("SELECT 'over tls'")) {
            if (!r.next() || !"over tls".equals(r.getString(1))) {
                throw new AssertionError("SELECT over TLS");
            }
        }
        System.out.println("jdbc tls: ok");
    }
}
