// SPDX-License-Identifier: Apache-2.0
// CallBook with a fixed clock and recorded effects: every transition of a service call.
#include "call_book.h"

#include <gtest/gtest.h>

#include <functional>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "gnomon/core/metrics.h"

namespace gnomon::engine {
namespace {

// What the book asked the engine to do. Stores succeed at once unless `fail_stores`.
class RecordedEffects final : public CallBook::Effects {
 public:
  void Send(const ServiceCall& c) override { sent.push_back(c.id); }
  void Store(const ServiceCall& c, std::string stored, shadow::ShadowStore::Done done,
             Delivery* /*hold*/) override {
    stores.push_back(c.id + "=" + (stored.empty() ? "forgotten" : StateOf(stored)));
    if (done) {
      done(fail_stores ? Internal("disk full") : Status());
    }
  }
  bool Offline(const std::string& thing) override { return offline.count(thing) != 0; }

  static std::string StateOf(const std::string& stored) {
    auto c = ServiceCall::FromStored(stored);
    return c.ok() ? std::string(CallStateName(c->state)) : "unreadable";
  }

  std::vector<std::string> sent, stores;
  std::set<std::string> offline;
  bool fail_stores = false;
};

// Records how a reply message's delivery ended.
class Finished final : public DeliveryObserver {
 public:
  void OnDeliveryFinished(Delivery& d) override { flags.push_back(d.flags()); }
  std::vector<uint8_t> flags;
};

struct Answer {
  int status = 0;
  std::string body;
};

class CallBookTest : public ::testing::Test {
 protected:
  CallBookTest() {
    for (CallState s :
         {CallState::kSucceeded, CallState::kFailed, CallState::kTimeout, CallState::kExpired}) {
      counters_.finished[static_cast<size_t>(s)] =
          metrics_.GetCounter("finished", "", {{"state", std::string(CallStateName(s))}});
    }
    counters_.store_failures = metrics_.GetCounter("store_failures", "");
    book_ = std::make_unique<CallBook>(CallBook::Options{.max_queued = 3, .keep_ms = 60000}, clock_,
                                       effects_, counters_);
  }

  static ServiceCall Call(std::string id, std::string thing = "lamp-1", bool sync = false) {
    ServiceCall c;
    c.id = std::move(id);
    c.thing = std::move(thing);
    c.service = "reboot";
    c.params = "{}";
    c.model = "lamp@1";
    c.sync = sync;
    c.timeout_ms = 5000;
    c.created_ms = 1000000;
    c.expires_ms = 1000000 + 30000;
    return c;
  }
  // Adds a call the way the engine does; `answer` (when given) waits for a sync call's end.
  ServiceCall& Add(ServiceCall c, Answer* answer = nullptr) {
    auto added = book_->Add(std::move(c));
    EXPECT_TRUE(std::holds_alternative<ServiceCall*>(added));
    ServiceCall& call = *std::get<ServiceCall*>(added);
    if (answer != nullptr) {
      call.waiter = [answer](int status, std::string body) { *answer = {status, std::move(body)}; };
    }
    return call;
  }
  uint64_t FinishedCount(CallState s) {
    return counters_.finished[static_cast<size_t>(s)]->value();
  }

  FixedClock clock_{1000000};
  MetricsRegistry metrics_;
  CallBook::Counters counters_;
  RecordedEffects effects_;
  std::unique_ptr<CallBook> book_;
};

// A cluster's partition moving away (docs/cluster.md#service-calls): the things' calls are
// forgotten here (their next owner restores them), a sync caller still waiting is told 503
// NOT_OWNER, and the other things' calls carry on.
TEST_F(CallBookTest, DropThingsForgetsTheirCallsAndTellsAWaitingCallerTheyMoved) {
  Answer waiting;
  Add(Call("c1", "lamp-1", true), &waiting);
  Add(Call("c2", "lamp-1"));
  Add(Call("c3", "lamp-2"));
  book_->On({"lamp-1", "c2", CallEvent::What::kSend});
  ASSERT_EQ(book_->live(), 3u);
  EXPECT_EQ(book_->DropThings([](std::string_view t) { return t == "lamp-1"; }), 2u);
  EXPECT_EQ(waiting.status, 503);
  EXPECT_NE(waiting.body.find("NOT_OWNER"), std::string::npos) << waiting.body;
  EXPECT_EQ(book_->Find("c1"), nullptr);
  EXPECT_EQ(book_->Find("c2"), nullptr);
  EXPECT_EQ(book_->unfinished("lamp-1"), 0u);
  EXPECT_EQ(book_->live(), 1u);
  ASSERT_NE(book_->Find("c3"), nullptr);
  EXPECT_EQ(book_->unfinished("lamp-2"), 1u);
  // Events for a forgotten call change nothing; the same id can be restored here again.
  book_->On({"lamp-1", "c1", CallEvent::What::kSend});
  ServiceCall back = Call("c2", "lamp-1");
  back.state = CallState::kSent;
  book_->Restore(back);
  ASSERT_NE(book_->Find("c2"), nullptr);
  EXPECT_EQ(book_->unfinished("lamp-1"), 1u);
  EXPECT_EQ(book_->DropThings([](std::string_view) { return false; }), 0u);
}

TEST_F(CallBookTest, ACallIsSentOnceDurableThenSentThenSucceedsAndIsForgottenAfterKeepMs) {
  Answer answer;
  ServiceCall& c = Add(Call("c1", "lamp-1", true), &answer);
  EXPECT_TRUE(c.in_flight) << "with the store until its first write is durable";
  EXPECT_EQ(book_->unfinished("lamp-1"), 1u);
  EXPECT_EQ(book_->live(), 1u);
  book_->Tick();
  EXPECT_TRUE(effects_.sent.empty()) << "not sent before it is durable";

  book_->On({"lamp-1", "c1", CallEvent::What::kSend});
  EXPECT_EQ(effects_.sent, std::vector<std::string>{"c1"});
  book_->Tick();
  EXPECT_EQ(effects_.sent.size(), 1u) << "in flight with the sink: not sent again";

  clock_.Set(1000100);
  book_->On({"lamp-1", "c1", CallEvent::What::kSent});
  EXPECT_EQ(c.state, CallState::kSent);
  EXPECT_EQ(c.sent_ms, 1000100);
  EXPECT_EQ(effects_.stores, std::vector<std::string>{"c1=SENT"});

  clock_.Set(1000200);
  book_->Finish(c, CallState::kSucceeded, nullptr);
  EXPECT_EQ(answer.status, 200) << "the sync caller hears once the end is stored";
  EXPECT_NE(answer.body.find(R"("state":"SUCCEEDED")"), std::string::npos) << answer.body;
  EXPECT_EQ(effects_.stores.back(), "c1=SUCCEEDED");
  EXPECT_EQ(FinishedCount(CallState::kSucceeded), 1u);
  EXPECT_EQ(book_->unfinished("lamp-1"), 0u);

  book_->On({"lamp-1", "c1", CallEvent::What::kFailed});
  EXPECT_EQ(c.state, CallState::kSucceeded) << "a finished call does not change";

  clock_.Set(1000200 + 59999);
  book_->Tick();
  ASSERT_NE(book_->Find("c1"), nullptr) << "readable for keep_ms";
  clock_.Set(1000200 + 60000);
  book_->Tick();
  EXPECT_EQ(book_->Find("c1"), nullptr);
  EXPECT_EQ(effects_.stores.back(), "c1=forgotten");
  EXPECT_EQ(book_->live(), 0u);
}

TEST_F(CallBookTest, CallsToAnOfflineDeviceWaitAndGoInOrderWhenItConnects) {
  effects_.offline.insert("lamp-1");
  Add(Call("c1"));
  Add(Call("c2"));
  Add(Call("d1", "lamp-2"));
  for (const char* id : {"c1", "c2", "d1"}) {
    book_->On({id[0] == 'd' ? "lamp-2" : "lamp-1", id, CallEvent::What::kSend});
  }
  EXPECT_EQ(effects_.sent, std::vector<std::string>{"d1"}) << "lamp-2 is not offline";
  book_->Tick();
  EXPECT_EQ(effects_.sent.size(), 1u);
  effects_.offline.clear();
  book_->SendQueued("lamp-1");
  EXPECT_EQ(effects_.sent, (std::vector<std::string>{"d1", "c1", "c2"}));
  book_->SendQueued("lamp-1");
  EXPECT_EQ(effects_.sent.size(), 3u) << "in flight: not sent twice";
  // The sink gave c2 up (stopping): the next tick sends it again.
  book_->On({"lamp-1", "c2", CallEvent::What::kUnsent});
  book_->Tick();
  EXPECT_EQ(effects_.sent.back(), "c2");
  EXPECT_EQ(effects_.sent.size(), 4u);
}

TEST_F(CallBookTest, AQueuedCallExpiresWhenItsTimeToLiveRunsOutWhileOffline) {
  effects_.offline.insert("lamp-1");
  ServiceCall& c = Add(Call("c1"));
  book_->On({"lamp-1", "c1", CallEvent::What::kSend});
  clock_.Set(c.expires_ms - 1);
  book_->Tick();
  EXPECT_EQ(c.state, CallState::kQueued);
  clock_.Set(c.expires_ms);
  book_->Tick();
  EXPECT_EQ(c.state, CallState::kExpired);
  EXPECT_EQ(c.error, "TM_CALL_EXPIRED");
  EXPECT_EQ(effects_.stores.back(), "c1=EXPIRED");
  EXPECT_EQ(FinishedCount(CallState::kExpired), 1u);
  EXPECT_TRUE(effects_.sent.empty());
}

TEST_F(CallBookTest, SentCallsTimeOutAfterTimeoutMsAndSyncCallsFromWhenTheyWereMade) {
  ServiceCall& async = Add(Call("a1"));
  book_->On({"lamp-1", "a1", CallEvent::What::kSend});
  clock_.Set(1002000);
  book_->On({"lamp-1", "a1", CallEvent::What::kSent});
  // A sync call that is never sent (offline from the start) still times out.
  effects_.offline.insert("lamp-2");
  Answer answer;
  ServiceCall& sync = Add(Call("s1", "lamp-2", true), &answer);
  book_->On({"lamp-2", "s1", CallEvent::What::kSend});

  clock_.Set(1000000 + 5000);
  book_->Tick();
  EXPECT_EQ(sync.state, CallState::kTimeout);
  EXPECT_EQ(answer.status, 504);
  EXPECT_NE(answer.body.find("TM_SERVICE_TIMEOUT"), std::string::npos) << answer.body;
  EXPECT_EQ(async.state, CallState::kSent) << "5 s after it was made, 3 s after it was sent";
  clock_.Set(1002000 + 5000);
  book_->Tick();
  EXPECT_EQ(async.state, CallState::kTimeout);
  EXPECT_EQ(async.message, "no reply within 5000 ms of sending");
  EXPECT_EQ(FinishedCount(CallState::kTimeout), 2u);
}

TEST_F(CallBookTest, APublishThatWasDeadLetteredFailsTheCall) {
  ServiceCall& c = Add(Call("c1"));
  book_->On({"lamp-1", "c1", CallEvent::What::kSend});
  book_->On({"lamp-1", "c1", CallEvent::What::kFailed});
  EXPECT_EQ(c.state, CallState::kFailed);
  EXPECT_EQ(c.error, "TM_SEND_FAILED");
  EXPECT_EQ(FinishedCount(CallState::kFailed), 1u);
}

TEST_F(CallBookTest, ACallWhoseFirstWriteFailedWasNeverMade) {
  Answer answer;
  Add(Call("c1", "lamp-1", true), &answer);
  book_->On({"lamp-1", "c1", CallEvent::What::kUnstored});
  EXPECT_EQ(answer.status, 500);
  EXPECT_EQ(book_->Find("c1"), nullptr);
  EXPECT_EQ(book_->unfinished("lamp-1"), 0u);
  EXPECT_EQ(book_->live(), 0u);
  book_->On({"lamp-1", "c1", CallEvent::What::kSend});  // late, for a call that is gone
  EXPECT_TRUE(effects_.sent.empty());
  EXPECT_TRUE(std::holds_alternative<ServiceCall*>(book_->Add(Call("c1")))) << "the id is free";
}

TEST_F(CallBookTest, ATakenIdAndTooManyUnfinishedCallsAreRefused) {
  Add(Call("c1"));
  auto again = book_->Add(Call("c1"));
  ASSERT_TRUE(std::holds_alternative<shadow::ShadowError>(again));
  EXPECT_EQ(std::get<shadow::ShadowError>(again).code, 409);
  EXPECT_FALSE(book_->CheckRoom("lamp-1").has_value());
  Add(Call("c2"));
  Add(Call("c3"));
  auto full = book_->CheckRoom("lamp-1");
  ASSERT_TRUE(full.has_value());
  EXPECT_EQ(full->code, 429);
  EXPECT_EQ(full->error, "TM_TOO_MANY_CALLS");
  EXPECT_FALSE(book_->CheckRoom("lamp-2").has_value()) << "per thing";
  book_->Finish(*book_->Find("c1"), CallState::kFailed, nullptr);
  EXPECT_FALSE(book_->CheckRoom("lamp-1").has_value()) << "finished calls do not count";
}

// A reply whose end cannot be stored is abandoned (the broker delivers it again); the sync
// caller hears 500.
TEST_F(CallBookTest, AnEndThatCannotBeStoredAbandonsTheReplyAndAnswers500) {
  Answer answer;
  ServiceCall& c = Add(Call("c1", "lamp-1", true), &answer);
  book_->On({"lamp-1", "c1", CallEvent::What::kSend});
  Finished observer;
  auto* reply = new Delivery(&observer, nullptr);
  reply->Hold();  // as the engine holds the reply message until the end is durable
  effects_.fail_stores = true;
  book_->Finish(c, CallState::kSucceeded, reply);
  EXPECT_EQ(answer.status, 500);
  EXPECT_EQ(counters_.store_failures->value(), 1u);
  reply->Release();  // the message's own processing hold
  ASSERT_EQ(observer.flags.size(), 1u);
  EXPECT_TRUE(observer.flags[0] & Delivery::kAbandoned);
}

// After a restart: stored calls come back through their stored form. Queued ones are sent by
// the next tick, sent ones still time out, finished ones stay readable until keep_ms.
TEST_F(CallBookTest, RestoredCallsGoOnWhereTheyWere) {
  ServiceCall queued = Call("q1");
  ServiceCall sent = Call("s1");
  sent.state = CallState::kSent;
  sent.sent_ms = 1000000;
  ServiceCall done = Call("d1");
  done.state = CallState::kSucceeded;
  done.finished_ms = 1000000;
  done.has_code = true;
  done.code = 200;
  done.data = R"({"ok":true})";
  for (const ServiceCall& c : {queued, sent, done}) {
    auto back = ServiceCall::FromStored(c.Json());
    ASSERT_TRUE(back.ok()) << back.status().message();
    EXPECT_EQ(back->Json(), c.Json()) << "the stored form reads back whole";
    book_->Restore(std::move(back).value());
  }
  EXPECT_EQ(book_->unfinished("lamp-1"), 2u);
  EXPECT_EQ(book_->live(), 3u);
  book_->Tick();
  EXPECT_EQ(effects_.sent, std::vector<std::string>{"q1"});
  clock_.Set(1000000 + 5000);
  book_->Tick();
  EXPECT_EQ(book_->Find("s1")->state, CallState::kTimeout);
  ASSERT_NE(book_->Find("d1"), nullptr);
  EXPECT_EQ(book_->Find("d1")->data, R"({"ok":true})");

  EXPECT_FALSE(ServiceCall::FromStored(R"({"id":"x","thing":"t","service":"s","params":{},)"
                                       R"("state":"LOST"})")
                   .ok())
      << "an unknown state is an error, not a call that is quietly finished";
  EXPECT_FALSE(ServiceCall::FromStored(R"({"id":"x"})").ok());
}

TEST(CallStateTest, NamesRoundTrip) {
  for (auto s : {CallState::kQueued, CallState::kSent, CallState::kSucceeded, CallState::kFailed,
                 CallState::kTimeout, CallState::kExpired}) {
    EXPECT_EQ(ParseCallState(CallStateName(s)), s);
  }
  EXPECT_EQ(ParseCallState("queued"), std::nullopt);
}

}  // namespace
}  // namespace gnomon::engine
