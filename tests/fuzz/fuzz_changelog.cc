// SPDX-License-Identifier: Apache-2.0
// Records read from a cluster's Kafka topics (docs/cluster.md), as a damaged or hostile topic
// could hold them: a shadow's documents event, a rule row, a member's announcement. Each is
// refused with an error or taken whole — and what was taken round-trips through the form
// gnomon writes (a shadow's as the restore takes it straight from the record, too), and the rest of
// the restore (the windows' bytes counted and described, the members' ring computed) never crashes
// on it.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "engine/src/cluster_members.h"
#include "gnomon/rules/rules.h"
#include "gnomon/shadow/document.h"
#include "gnomon/shadow/store.h"
#include "gnomon/shadow/value.h"

namespace {

void Check(bool ok) {
  if (!ok) {
    std::abort();
  }
}

void ShadowRecord(std::string_view in) {
  using gnomon::shadow::ShadowDocument;
  auto doc = ShadowDocument::FromChangelog(in);
  // What the restore stores (taken from the record without building the document), refused
  // exactly when the document is, and read back as the owner would: that document.
  auto restored = ShadowDocument::StoredFromChangelog(in);
  Check(doc.ok() == restored.ok());
  if (!doc.ok()) {
    return;
  }
  auto read = ShadowDocument::FromStored(*restored);
  Check(read.ok());
  Check(read->DocumentJson() == doc->DocumentJson());
  Check(read->StoredJson() == doc->StoredJson());
  // The document's own stored form round-trips too.
  std::string stored = doc->StoredJson();
  auto back = ShadowDocument::FromStored(stored);
  Check(back.ok());
  Check(back->StoredJson() == stored);
  Check(gnomon::shadow::Value::Parse(doc->DocumentJson()).ok());
}

void RuleRecord(std::string_view in) {
  using gnomon::shadow::RuleState;
  auto row = RuleState::FromChangelog(in);
  if (!row.ok()) {
    return;
  }
  auto back = RuleState::FromChangelog(row->ChangelogJson("r"));
  Check(back.ok());
  Check(back->version == row->version && back->json == row->json &&
        back->timers == row->timers && back->inactive_due == row->inactive_due &&
        back->next_due == row->next_due && back->windows == row->windows &&
        back->window_due == row->window_due);
  // The windows' bytes as the restore counts them and the state API describes them, under a
  // rule that declares one window of each kind.
  (void)gnomon::rules::OpenWindows(row->windows);
  static const gnomon::rules::RuleInfo rule = [] {
    gnomon::rules::RuleInfo r;
    r.name = "r";
    const char* names[] = {"tumbling", "hopping", "sliding", "session"};
    for (int k = 0; k < 4; ++k) {
      gnomon::rules::WindowDecl d;
      d.name = names[k];
      d.spec.kind = static_cast<gnomon::rules::WindowSpec::Kind>(k);
      d.spec.size_ms = 60'000;
      d.spec.hop_ms = k == 1 ? 10'000 : 0;
      d.spec.max_open = 64;
      d.spec.max_events = 256;
      d.of = {"v"};
      for (int a = 0; a <= static_cast<int>(gnomon::rules::Agg::kStddev); ++a) {
        d.aggs.push_back(static_cast<gnomon::rules::Agg>(a));
      }
      r.windows.push_back(std::move(d));
    }
    return r;
  }();
  Check(gnomon::shadow::Value::Parse(gnomon::rules::DescribeWindows(rule, row->windows)).ok());
}

void MemberRecord(std::string_view in) {
  using gnomon::engine::ClusterMember;
  using gnomon::engine::ClusterMembers;
  auto m = ClusterMember::FromJson(in);
  if (m.ok()) {
    auto back = ClusterMember::FromJson(m->Json());
    Check(back.ok());
    Check(back->instance == m->instance && back->api == m->api && back->owned == m->owned &&
          back->restoring == m->restoring && back->standby == m->standby &&
          back->at_ms == m->at_ms);
  }
  // Applied under its own name and another's, next to a sound member: the ring and the owners
  // are computed whatever the record said.
  ClusterMembers members("a", 10'000);
  std::string self = R"({"instance":"a","api":"","owned":[0],"restoring":[],"standby":[],"at":5})";
  (void)members.Apply("a", &self);
  std::string value(in);
  (void)members.Apply(m.ok() ? m->instance : std::string("b"), &value);
  (void)members.Apply("c", &value);
  for (int64_t now : {int64_t{0}, int64_t{5}, m.ok() ? m->at_ms : int64_t{1}}) {
    std::vector<int32_t> claimed;
    (void)members.StandbyPartitions(1, now, &claimed);
    (void)members.StandbyPartitions(3, now);
    for (int32_t p : {0, 1, 7}) {
      (void)members.OwnerOf(p, now);
    }
    (void)members.Fresh(now);
  }
  (void)members.Members();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view in(reinterpret_cast<const char*>(data), size);
  ShadowRecord(in);
  RuleRecord(in);
  MemberRecord(in);
  return 0;
}
