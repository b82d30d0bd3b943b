// SPDX-License-Identifier: Apache-2.0
#include "gnomon/sqlite/sqlite.h"

#include <gtest/gtest.h>

#include "tests/support/test_support.h"

namespace gnomon::sqlite {
namespace {

TEST(SqliteTest, OpenReadOnlyOfAMissingFileNamesTheFile) {
  gnomon::testing::TempDir dir;
  Db db;
  Status st = db.Open(dir.path() + "/missing.db", Db::Mode::kReadOnly);
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("missing.db"), std::string::npos) << st.message();
  EXPECT_EQ(db.get(), nullptr);
  EXPECT_EQ(db.Error(), "not open");
}

TEST(SqliteTest, WritesAndReadsBackBytesWithNulsAndNull) {
  gnomon::testing::TempDir dir;
  Db db;
  ASSERT_TRUE(db.Open(dir.path() + "/t.db").ok());
  ASSERT_TRUE(db.Exec("CREATE TABLE t (a TEXT, b BLOB)").ok());
  Stmt insert;
  ASSERT_TRUE(db.Prepare("INSERT INTO t (a, b) VALUES (?1, ?2)", insert).ok());
  std::string blob("x\0y", 3);
  BindText(insert.get(), 1, "héllo");
  BindBlob(insert.get(), 2, blob);
  ASSERT_EQ(sqlite3_step(insert.get()), SQLITE_DONE);
  sqlite3_reset(insert.get());
  sqlite3_bind_null(insert.get(), 1);
  sqlite3_bind_null(insert.get(), 2);
  ASSERT_EQ(sqlite3_step(insert.get()), SQLITE_DONE);

  Stmt select;
  ASSERT_TRUE(db.Prepare("SELECT a, b FROM t ORDER BY rowid", select).ok());
  ASSERT_EQ(sqlite3_step(select.get()), SQLITE_ROW);
  EXPECT_EQ(ColumnText(select.get(), 0), "héllo");
  EXPECT_EQ(ColumnText(select.get(), 1), blob);
  ASSERT_EQ(sqlite3_step(select.get()), SQLITE_ROW);
  EXPECT_EQ(ColumnText(select.get(), 0), "");
  EXPECT_EQ(ColumnText(select.get(), 1), "");

  // A moved statement is finalized once, by its new owner.
  Stmt moved = std::move(select);
  EXPECT_EQ(select.get(), nullptr);  // NOLINT(bugprone-use-after-move): what a move leaves
  EXPECT_NE(moved.get(), nullptr);
}

TEST(SqliteTest, ErrorsNameTheStatement) {
  gnomon::testing::TempDir dir;
  Db db;
  ASSERT_TRUE(db.Open(dir.path() + "/t.db").ok());
  Stmt s;
  Status prepare = db.Prepare("SELECT nope FROM missing_table", s);
  EXPECT_EQ(prepare.code(), StatusCode::kInvalidArgument);
  EXPECT_NE(prepare.message().find("missing_table"), std::string::npos) << prepare.message();
  Status exec = db.Exec("DROP TABLE missing_table");
  EXPECT_FALSE(exec.ok());
  EXPECT_NE(exec.message().find("DROP TABLE missing_table: no such table"), std::string::npos)
      << exec.message();
}

}  // namespace
}  // namespace gnomon::sqlite
