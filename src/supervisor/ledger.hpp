// SPDX-License-Identifier: GPL-3.0-or-later
// The durable job ledger (issue 17): one SQLite row per finished job, rejected event and (when
// configured) unrouted event, kept across restarts for `loopabullctl history` and `job ID`.
//
// Why SQLite: one file, no server, crash-safe transactions (WAL), indexes for the history
// queries, and a library every distribution keeps patched (Debian's libsqlite3).
//
// The event path never waits on the disk: record() appends to a batch in memory; the batch is
// written in one transaction when it holds history.batch_size records or when the
// history.flush_interval timer fires, whichever comes first. A SIGKILL loses at most the batch
// in memory; WAL with synchronous=NORMAL keeps every committed batch (sqlite.org/wal.html).
// Faults of the database never reach the event path: an error is logged and counted; a corrupt
// database (SQLITE_CORRUPT, SQLITE_NOTADB) is renamed aside and a new one started; a full disk
// drops the batch (counted) and prunes the oldest rows.
//
// Event bodies (history.store_bodies, off by default) live in a table of their own, "bodies", in
// the same database: the file is already readable by the service user alone (0600, below), a
// body commits in the same transaction as its job's record, a corrupt database is moved aside
// with its bodies, and pruning removes a body with its job. A body longer than
// history.max_body_size is not kept: its row says how long it was, and the job cannot be
// replayed. The table has statements of its own, so that the jobs table's path is untouched.
#pragma once

#include "core/config.hpp"
#include "core/log-safe.hpp"
#include "core/scheduler.hpp"

#include <systemd/sd-event.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

struct sqlite3;
struct sqlite3_stmt;

namespace loopabull {

struct LedgerRecord {
    JobId job_id = 0;       // 0 for events that made no job (rejected, unrouted)
    std::string event_id{}; // the event's id as JSON text ("" when it had none)
    std::string looper{};
    std::string routing_key{};
    std::string route{};           // the route that took it; empty without routes
    std::string playbook{};        // absolute path
    std::string playbook_sha256{}; // hex, of the file as read when the job started
    std::string user{};            // the user the playbook ran as
    std::uint64_t queued_usec = 0, started_usec = 0, finished_usec = 0; // CLOCK_REALTIME
    std::string result{};                                               // protocol v1 result name
    std::optional<int> exit_code{};
    std::string unit{};
    std::string error{}; // the reason of a rejection, a failure's text
    // What de-duplication looks for (the event's dedup_id, else its id as JSON text); "" when
    // the looper does not de-duplicate.
    std::string dedup_key{};
    // Read by query() from the bodies table (record() ignores them: see record_body()).
    std::optional<JobId> replay_of{};         // the job this one replayed
    std::optional<std::uint64_t> body_size{}; // bytes; nullopt: no body was kept for it
    bool body_stored = false;                 // false with a size: over history.max_body_size
};

// The answer of Ledger::body: the body of a job, or why there is none.
struct StoredBody {
    enum class Status {
        stored,
        not_stored, // the job is in the ledger, its body was not kept (store_bodies was off)
        too_large,  // it was longer than history.max_body_size; size says how long
        no_job,     // no record of this job id
        pruned,     // no record, and its id is older than the oldest kept: retention removed it
    } status = Status::no_job;
    std::string body{}; // JSON text, as the event's body was (stored only)
    std::uint64_t size = 0;
    // The job's record (stored, not_stored, too_large): what a replay routes again.
    std::string routing_key{}, looper{}, event_id{}, result{};
};

// The answer of Ledger::find_success: a job, none, or a database that could not answer.
struct DedupLookup {
    enum class Status { found, none, error } status = Status::none;
    JobId job_id = 0;
    std::string error{}; // why the database could not answer
};

struct LedgerQuery {
    std::string key_pattern{};    // shell glob on routing_key (SQLite GLOB); "" for all
    std::string result{};         // "" for all
    std::uint64_t since_usec = 0; // finished at or after (CLOCK_REALTIME)
    std::uint32_t limit = 100;    // newest first; capped at kMaxQueryLimit
    std::optional<JobId> job_id{};
};

struct LedgerStats {
    std::uint64_t written = 0;        // records committed
    std::uint64_t dropped = 0;        // records lost to a database fault or a full backlog
    std::uint64_t errors = 0;         // failed writes, opens or queries
    std::uint64_t rotations = 0;      // corrupt databases renamed aside
    std::uint64_t unrouted = 0;       // unrouted events seen (recorded or not)
    std::uint64_t bodies_dropped = 0; // bodies not kept: the database was unwritable too long
};

// The one owner of a prepared statement: finalized when its owner ends, or by reset() (before
// the database it belongs to is closed).
struct Stmt {
    sqlite3_stmt* s = nullptr;
    Stmt() = default;
    Stmt(const Stmt&) = delete;
    Stmt& operator=(const Stmt&) = delete;
    ~Stmt() { reset(); }
    void reset() noexcept;
};

class Ledger {
  public:
    static constexpr std::uint32_t kMaxQueryLimit = 10000;
    // Records waiting for the disk beyond this are dropped (counted): memory stays bounded
    // while the database is unwritable.
    static constexpr std::size_t kMaxPending = 100000;
    // The same for bodies waiting for the disk, in bytes.
    static constexpr std::size_t kMaxPendingBodyBytes = 64u << 20;

    // path: the database file (its directory must exist). A database that cannot be opened now
    // is retried at every flush; the ledger is never a reason for loopabull not to start.
    Ledger(sd_event* event, HistoryConfig config, std::string path);
    ~Ledger(); // writes what is pending
    Ledger(const Ledger&) = delete;
    Ledger& operator=(const Ledger&) = delete;

    // Queues a record; cheap (no I/O unless the batch is full).
    void record(LedgerRecord r);
    // Counts an unrouted event; true when history.record_unrouted wants its record (then pass
    // it to record()). Unrouted events can come at a flood's rate: the caller builds the record
    // (and its reason) only when it is kept.
    bool count_unrouted() noexcept {
        ++stats_.unrouted;
        return config_.record_unrouted;
    }
    // Whether bodies are kept (history.store_bodies).
    bool stores_bodies() const noexcept { return config_.store_bodies; }
    // Queues a finished job's body, before its record(): written in the same transaction.
    // body: JSON text; a body over history.max_body_size is kept as its size only. replay_of:
    // the job a replay replayed. Does nothing when bodies are not kept.
    void record_body(JobId job, std::optional<JobId> replay_of, std::string body);
    // The stored body of a job and its record (flushes first). Throws std::runtime_error on a
    // database error, like query().
    StoredBody body(JobId job);
    // Writes the pending batch now (one transaction), then applies retention.
    void flush();
    // Newest first. Flushes first, so that a job that just ended is found. Throws
    // std::runtime_error on a database error (the D-Bus API turns it into an error reply).
    std::vector<LedgerRecord> query(const LedgerQuery& q);
    // The newest job of `looper` with this dedup key that succeeded at or after since_usec
    // (CLOCK_REALTIME), among the written records and the batch not yet written. Uses the index
    // on (looper, dedup_key). A database error is a value (status error), never an exception:
    // the caller then runs the event (a duplicate run is better than a lost event).
    DedupLookup find_success(const std::string& looper, const std::string& dedup_key,
                             std::uint64_t since_usec);
    // The highest job id recorded, so that ids stay unique across restarts; 0 when none.
    JobId max_job_id();
    const LedgerStats& stats() const noexcept { return stats_; }
    const std::string& path() const noexcept { return path_; }
    const std::string& user() const noexcept { return user_; }

  private:
    static int on_timer(sd_event_source*, uint64_t, void*) noexcept;
    bool open();
    void close() noexcept;
    void rotate();
    void prune();
    void handle_error(int rc, const char* what);
    bool exec(const char* sql);
    // The bodies table (see the top of this file): created or, with store_bodies off, emptied.
    bool open_bodies();
    int write_bodies(int rc); // inside flush()'s transaction; rc: the batch's so far
    void prune_bodies();
    // The statement of `st`, prepared on first use and kept for the life of the connection:
    // preparing the insert and the pruning at every batch cost a parse and a plan each time.
    // nullptr (with the SQLite code in *rc) when it cannot be prepared.
    sqlite3_stmt* prepared(Stmt& st, const char* sql, int* rc);

    sd_event* event_;
    HistoryConfig config_;
    std::string path_;
    std::string user_;
    sqlite3* db_ = nullptr;
    Stmt insert_, prune_; // prepared once per connection; reset by close()
    sd_event_source* timer_ = nullptr;
    std::vector<LedgerRecord> pending_;
    struct PendingBody {
        JobId job;
        std::optional<JobId> replay_of;
        std::uint64_t size;
        std::string body; // empty when over the cap
    };
    std::vector<PendingBody> pending_bodies_;
    std::size_t pending_body_bytes_ = 0;
    LedgerStats stats_;
    // A fault that repeats (a full disk) fails every batch, at the event rate.
    LogRateLimit lost_log_{5, std::chrono::minutes(1)};
    LogRateLimit busy_log_{5, std::chrono::minutes(1)};
    static constexpr int kBusyTimeoutMs = 1000;
    bool locked_ = false; // the last batch found the database locked: it waits, and retries
    void log_lost_batch(int rc, std::size_t lost);
    void clear_pending(); // the batch and its bodies, written or lost
    void arm_timer();     // the next flush in flush_interval, unless one is due already
};

// The default database path: history.path, else $STATE_DIRECTORY/history.sqlite (systemd sets
// STATE_DIRECTORY from StateDirectory=, a colon-separated list: the first is used); nullopt when
// neither is there (the ledger is then off) or history.enabled is false.
std::optional<std::string> ledger_path(const HistoryConfig& config);

// SHA-256 of a file as lowercase hex; "" when it cannot be read (logged by the caller's choice).
std::string sha256_file(const std::string& path);

} // namespace loopabull
