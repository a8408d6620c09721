// SPDX-License-Identifier: GPL-3.0-or-later
// The durable job ledger on SQLite (see ledger.hpp for why and how).
#include "supervisor/ledger.hpp"

#include "supervisor/log.hpp"

#include <openssl/evp.h>
#include <spdlog/spdlog.h>
#include <sqlite3.h>

#include <fcntl.h>
#include <pwd.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

namespace loopabull {

namespace {

constexpr const char* kSchema = R"(
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY,
    job_id INTEGER NOT NULL,
    event_id TEXT NOT NULL,
    looper TEXT NOT NULL,
    routing_key TEXT NOT NULL,
    route TEXT NOT NULL,
    playbook TEXT NOT NULL,
    playbook_sha256 TEXT NOT NULL,
    user TEXT NOT NULL,
    queued_usec INTEGER NOT NULL,
    started_usec INTEGER NOT NULL,
    finished_usec INTEGER NOT NULL,
    result TEXT NOT NULL,
    exit_code INTEGER,
    unit TEXT NOT NULL,
    error TEXT NOT NULL,
    dedup_key TEXT NOT NULL DEFAULT '');
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(finished_usec);
)";

// The lookups by job id and de-duplication's (issue 17); after the column is sure to exist.
// Both indexes are partial: rejected and unrouted events (job_id 0) and loopers that do not
// de-duplicate (dedup_key '') are most records at a flood's rate, and an index entry costs
// every insert and every pruned row a B-tree descent (about 0.7 µs per record and index here,
// docs/PERFORMANCE.md). Queries that use them repeat `job_id > 0` / `dedup_key != ''` word for
// word: the planner picks a partial index only for a WHERE that contains its condition
// (sqlite.org/partialindex.html; `job_id > 0` does not make `job_id != 0` usable). The full
// indexes of ledgers written before are replaced once.
constexpr const char* kDedupIndex = R"(
DROP INDEX IF EXISTS jobs_job_id;
DROP INDEX IF EXISTS jobs_dedup;
CREATE INDEX IF NOT EXISTS jobs_job ON jobs(job_id) WHERE job_id > 0;
CREATE INDEX IF NOT EXISTS jobs_dedup_key ON jobs(looper, dedup_key) WHERE dedup_key != '';
)";

constexpr const char* kInsert =
    "INSERT INTO jobs (job_id, event_id, looper, routing_key, route, playbook, playbook_sha256, "
    "user, queued_usec, started_usec, finished_usec, result, exit_code, unit, error, dedup_key) "
    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";

// Both deletions use an index (finished_usec; seq is the row id). seq grows with every insert:
// the newest max_jobs rows have the highest ones.
constexpr const char* kPrune =
    "DELETE FROM jobs WHERE finished_usec < ?1 OR seq <= (SELECT MAX(seq) FROM jobs) - ?2";

constexpr const char* kColumns =
    "job_id, event_id, looper, routing_key, route, playbook, playbook_sha256, user, queued_usec, "
    "started_usec, finished_usec, result, exit_code, unit, error, dedup_key";

std::uint64_t now_usec() {
    timespec ts{};
    clock_gettime(CLOCK_REALTIME, &ts);
    return static_cast<std::uint64_t>(ts.tv_sec) * 1000000 +
           static_cast<std::uint64_t>(ts.tv_nsec) / 1000;
}

std::string current_user() {
    if (auto* pw = getpwuid(geteuid())) return pw->pw_name;
    return std::to_string(geteuid());
}

void bind_text(sqlite3_stmt* s, int i, const std::string& v) {
    sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
}

// Without a copy: for a string that outlives the statement's next step (the batch's records,
// until sqlite3_clear_bindings after the batch).
void bind_text_static(sqlite3_stmt* s, int i, const std::string& v) {
    sqlite3_bind_text(s, i, v.data(), static_cast<int>(v.size()), SQLITE_STATIC);
}

// SQLite counts every allocation in global statistics under a global mutex unless told not to
// (SQLITE_CONFIG_MEMSTATUS, sqlite.org/c3ref/c_config_covering_index_scan.html): a lock and an
// unlock per allocation, several per inserted row (measured with the copy-free binding below:
// 2.7 to 2.0 µs of CPU per record, docs/PERFORMANCE.md).
// Nothing here reads those statistics (no soft heap limit). It must be set before SQLite is
// initialized; later it fails harmlessly (SQLITE_MISUSE) and the statistics stay on.
void configure_sqlite_once() {
    static const int rc = sqlite3_config(SQLITE_CONFIG_MEMSTATUS, 0);
    (void)rc;
}

std::string column_text(sqlite3_stmt* s, int i) {
    auto* p = reinterpret_cast<const char*>(sqlite3_column_text(s, i));
    return p ? std::string(p, static_cast<std::size_t>(sqlite3_column_bytes(s, i))) : std::string();
}

bool is_corruption(int rc) {
    int primary = rc & 0xff;
    return primary == SQLITE_CORRUPT || primary == SQLITE_NOTADB;
}

// Whether the last run shut down cleanly, kept in the database itself: "running" is 1 from
// the start of a run to its last flush. A run that finds it 1 follows a SIGKILL or a crash, which
// lost the batch in memory then (WAL keeps every committed one): that is said in the log, with
// the last job that was recorded, so that an operator knows where the history has its hole.
void report_unclean_shutdown(sqlite3* db, const std::string& path) {
    if (sqlite3_exec(db,
                     "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER "
                     "NOT NULL)",
                     nullptr, nullptr, nullptr) != SQLITE_OK)
        return;
    Stmt st;
    bool unclean = false;
    if (sqlite3_prepare_v2(db, "SELECT value FROM meta WHERE key = 'running'", -1, &st.s,
                           nullptr) == SQLITE_OK &&
        sqlite3_step(st.s) == SQLITE_ROW)
        unclean = sqlite3_column_int64(st.s, 0) != 0;
    if (unclean) {
        Stmt last;
        std::int64_t job = 0, seq = 0, finished = 0;
        if (sqlite3_prepare_v2(db,
                               "SELECT job_id, seq, finished_usec FROM jobs ORDER BY seq DESC "
                               "LIMIT 1",
                               -1, &last.s, nullptr) == SQLITE_OK &&
            sqlite3_step(last.s) == SQLITE_ROW) {
            job = sqlite3_column_int64(last.s, 0);
            seq = sqlite3_column_int64(last.s, 1);
            finished = sqlite3_column_int64(last.s, 2);
        }
        spdlog::warn("history: the last run did not shut down cleanly (killed or crashed): "
                     "the records it had not yet written are lost (at most one batch, "
                     "history.batch_size records or history.flush_interval's worth); the last "
                     "record in {} is #{} (job {}, finished at {} µs since the epoch)",
                     path, seq, job, finished);
    }
    sqlite3_exec(db, "INSERT OR REPLACE INTO meta (key, value) VALUES ('running', 1)", nullptr,
                 nullptr, nullptr);
}

// The ledger holds event ids, error texts and (later) bodies: readable by the service user alone.
// A database created by us has mode 0600 (umask 077 around the open); one made by someone else,
// or restored from a backup, may not: it, its -wal and its -shm are set to 0600 and the change is
// logged. A file owned by another user is reported, not taken over (we could not chown it).
void restrict_mode(const std::string& path) {
    for (const char* suffix : {"", "-wal", "-shm"}) {
        auto file = path + suffix;
        struct stat st {};
        if (::stat(file.c_str(), &st) < 0) continue;
        if (st.st_uid != geteuid())
            spdlog::warn("history: {} belongs to uid {}, not to the service user (uid {})", file,
                         st.st_uid, geteuid());
        if ((st.st_mode & 077) == 0) continue;
        if (::chmod(file.c_str(), 0600) < 0)
            spdlog::error("history: {} has mode {:04o} and cannot be set to 0600: {}", file,
                          st.st_mode & 07777, std::strerror(errno));
        else
            spdlog::warn("history: {} had mode {:04o}; set to 0600 (readable by the service user "
                         "alone)",
                         file, st.st_mode & 07777);
    }
}

void mark_clean_shutdown(sqlite3* db) {
    sqlite3_exec(db, "INSERT OR REPLACE INTO meta (key, value) VALUES ('running', 0)", nullptr,
                 nullptr, nullptr);
}

} // namespace

void Stmt::reset() noexcept {
    sqlite3_finalize(s);
    s = nullptr;
}

std::optional<std::string> ledger_path(const HistoryConfig& config) {
    if (!config.enabled) return std::nullopt;
    if (config.path) return config.path;
    const char* state = std::getenv("STATE_DIRECTORY");
    if (!state || !*state) return std::nullopt;
    std::string dir(state);
    dir = dir.substr(0, dir.find(':'));
    return dir + "/history.sqlite";
}

std::string sha256_file(const std::string& path) {
    int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) return {};
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
    bool ok = ctx && EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) == 1;
    std::array<char, 65536> buf;
    while (ok) {
        ssize_t n = ::read(fd, buf.data(), buf.size());
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) ok = false;
        if (n <= 0) break;
        ok = EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<std::size_t>(n)) == 1;
    }
    ::close(fd);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned len = 0;
    if (!ok || EVP_DigestFinal_ex(ctx.get(), md, &len) != 1) return {};
    std::string hex;
    static constexpr char kDigits[] = "0123456789abcdef";
    for (unsigned i = 0; i < len; ++i) {
        hex += kDigits[md[i] >> 4];
        hex += kDigits[md[i] & 0xf];
    }
    return hex;
}

Ledger::Ledger(sd_event* event, HistoryConfig config, std::string path)
    : event_(event), config_(std::move(config)), path_(std::move(path)), user_(current_user()) {
    int r = sd_event_add_time(event_, &timer_, CLOCK_MONOTONIC, UINT64_MAX, 0, on_timer, this);
    if (r < 0) throw std::runtime_error("ledger timer: " + std::string(std::strerror(-r)));
    sd_event_source_set_description(timer_, "ledger-flush");
    sd_event_source_set_enabled(timer_, SD_EVENT_OFF);
    configure_sqlite_once();
    if (open()) {
        spdlog::info("history: ledger {}", path_);
        report_unclean_shutdown(db_, path_);
    }
}

Ledger::~Ledger() {
    try {
        flush();
    } catch (...) {
        // flush() logs its own faults; nothing else can be done on the way out.
    }
    if (auto n = lost_log_.flush())
        spdlog::error("history: suppressed {} similar messages (lost batches) before the stop", n);
    if (db_ && pending_.empty()) mark_clean_shutdown(db_);
    close();
    sd_event_source_disable_unref(timer_);
}

bool Ledger::exec(const char* sql) {
    char* msg = nullptr;
    int rc = sqlite3_exec(db_, sql, nullptr, nullptr, &msg);
    if (rc != SQLITE_OK) {
        spdlog::error("history: {}: {}", path_, msg ? msg : sqlite3_errstr(rc));
        sqlite3_free(msg);
        handle_error(rc, "statement");
        return false;
    }
    return true;
}

bool Ledger::open() {
    if (db_) return true;
    // The ledger may hold error texts and event ids: readable by the service user alone.
    mode_t old = umask(077);
    int rc =
        sqlite3_open_v2(path_.c_str(), &db_,
                        SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
    umask(old);
    if (rc != SQLITE_OK) {
        ++stats_.errors;
        spdlog::error("history: cannot open {}: {}", path_,
                      db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc));
        close();
        return false;
    }
    restrict_mode(path_);
    // A reader (the D-Bus query) never waits long for the writer: both run on our one thread.
    sqlite3_busy_timeout(db_, kBusyTimeoutMs);
    // WAL: a commit appends to the log instead of rewriting pages; synchronous=NORMAL syncs at
    // checkpoints only, so a crash may lose the last batch but never corrupts the database.
    if (!exec("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;") || !exec(kSchema)) {
        close();
        return false;
    }
    // A ledger written before dedup_key existed (0.2 development builds) gains the column; the
    // statement fails harmlessly ("duplicate column name") on every other database.
    sqlite3_exec(db_, "ALTER TABLE jobs ADD COLUMN dedup_key TEXT NOT NULL DEFAULT ''", nullptr,
                 nullptr, nullptr);
    if (!exec(kDedupIndex) || !open_bodies()) {
        close();
        return false;
    }
    return true;
}

sqlite3_stmt* Ledger::prepared(Stmt& st, const char* sql, int* rc) {
    if (!st.s) *rc = sqlite3_prepare_v3(db_, sql, -1, SQLITE_PREPARE_PERSISTENT, &st.s, nullptr);
    return st.s;
}

void Ledger::close() noexcept {
    insert_.reset();
    prune_.reset();
    if (db_) sqlite3_close_v2(db_);
    db_ = nullptr;
}

void Ledger::rotate() {
    close();
    auto aside = path_ + ".corrupt-" + std::to_string(now_usec() / 1000000);
    for (const char* suffix : {"", "-wal", "-shm"}) {
        auto from = path_ + suffix;
        if (::rename(from.c_str(), (aside + suffix).c_str()) < 0 && errno != ENOENT)
            spdlog::error("history: cannot move {} aside: {}", from, std::strerror(errno));
    }
    ++stats_.rotations;
    spdlog::error("history: {} is corrupt; moved aside to {} and starting a new ledger", path_,
                  aside);
    open();
}

void Ledger::handle_error(int rc, const char* what) {
    ++stats_.errors;
    spdlog::error("history: {} failed on {}: {}", what, path_, sqlite3_errstr(rc));
    if (is_corruption(rc)) rotate();
}

// One line per lost batch, at most five a minute; the counters (GetMetrics, the ledger's error
// and drop counts) keep the full tally.
void Ledger::log_lost_batch(int rc, std::size_t lost) {
    if (log::may_log(lost_log_, "lost batches", spdlog::level::err))
        spdlog::error("history: writing a batch failed on {}: {}; {} record(s) lost", path_,
                      sqlite3_errstr(rc), lost);
}

void Ledger::record(LedgerRecord r) {
    if (pending_.size() >= kMaxPending) {
        ++stats_.dropped;
        return;
    }
    pending_.push_back(std::move(r));
    // While the database is locked, only the timer tries again (see flush()).
    if (pending_.size() >= config_.batch_size && !locked_) {
        flush();
        return;
    }
    arm_timer();
}

int Ledger::on_timer(sd_event_source*, uint64_t, void* userdata) noexcept {
    try {
        static_cast<Ledger*>(userdata)->flush();
    } catch (const std::exception& e) {
        spdlog::error("history: {}", e.what());
    }
    return 0; // the ledger's faults never stop the event loop
}

void Ledger::flush() {
    sd_event_source_set_enabled(timer_, SD_EVENT_OFF);
    if (pending_.empty()) return;
    if (!open()) {
        // Keep the batch for the next try, unless it has grown to the cap.
        if (pending_.size() >= kMaxPending) {
            stats_.dropped += pending_.size();
            clear_pending();
        }
        return;
    }
    // A retry after a lock does not wait for it: the event loop must not stall once a second
    // for as long as another process holds the database.
    sqlite3_busy_timeout(db_, locked_ ? 0 : kBusyTimeoutMs);
    sqlite3_stmt* s = nullptr;
    int rc = sqlite3_exec(db_, "BEGIN", nullptr, nullptr, nullptr);
    if (rc == SQLITE_OK) s = prepared(insert_, kInsert, &rc);
    for (auto& r : pending_) {
        if (rc != SQLITE_OK) break;
        sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(r.job_id));
        bind_text_static(s, 2, r.event_id);
        bind_text_static(s, 3, r.looper);
        bind_text_static(s, 4, r.routing_key);
        bind_text_static(s, 5, r.route);
        bind_text_static(s, 6, r.playbook);
        bind_text_static(s, 7, r.playbook_sha256);
        bind_text_static(s, 8, r.user);
        sqlite3_bind_int64(s, 9, static_cast<sqlite3_int64>(r.queued_usec));
        sqlite3_bind_int64(s, 10, static_cast<sqlite3_int64>(r.started_usec));
        sqlite3_bind_int64(s, 11, static_cast<sqlite3_int64>(r.finished_usec));
        bind_text_static(s, 12, r.result);
        if (r.exit_code)
            sqlite3_bind_int(s, 13, *r.exit_code);
        else
            sqlite3_bind_null(s, 13);
        bind_text_static(s, 14, r.unit);
        bind_text_static(s, 15, r.error);
        bind_text_static(s, 16, r.dedup_key);
        rc = sqlite3_step(s);
        if (rc == SQLITE_DONE) rc = SQLITE_OK;
        sqlite3_reset(s);
    }
    // The records are about to go: no binding may point into them.
    if (s) sqlite3_clear_bindings(s);
    rc = write_bodies(rc);
    if (rc == SQLITE_OK) rc = sqlite3_exec(db_, "COMMIT", nullptr, nullptr, nullptr);
    if (rc != SQLITE_OK) {
        sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
        // Another process holds the database (an operator's sqlite3 shell, a backup): the batch
        // waits for the next try, up to the cap on what is kept in memory.
        int primary = rc & 0xff;
        if ((primary == SQLITE_BUSY || primary == SQLITE_LOCKED) && pending_.size() < kMaxPending) {
            ++stats_.errors;
            locked_ = true;
            if (log::may_log(busy_log_, "ledger locked"))
                spdlog::warn("history: {} is locked by another process: {} record(s) kept for "
                             "the next try",
                             path_, pending_.size());
            arm_timer();
            return;
        }
        // Any other fault loses the batch rather than retrying it: a fault that repeats would
        // otherwise hold every later record back too. It is counted and logged.
        stats_.dropped += pending_.size();
        ++stats_.errors;
        locked_ = false;
        log_lost_batch(rc, pending_.size());
        clear_pending();
        if (is_corruption(rc)) rotate();
        if ((rc & 0xff) == SQLITE_FULL) prune();
        return;
    }
    stats_.written += pending_.size();
    if (locked_) spdlog::info("history: {} is writable again", path_);
    locked_ = false;
    clear_pending();
    prune();
}

void Ledger::prune() {
    if (!db_) return;
    // At every batch: what it costs is deleting the rows themselves (about 0.5 µs a row here),
    // the same every batch or every tenth; the statement's own cost is a few µs a batch
    // (docs/PERFORMANCE.md). Every batch keeps the table within max_jobs + one batch.
    auto max_age = static_cast<std::uint64_t>(config_.max_age.count());
    auto now = now_usec();
    auto cutoff = now > max_age ? now - max_age : 0;
    int rc = SQLITE_OK;
    if (auto* s = prepared(prune_, kPrune, &rc)) {
        sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(cutoff));
        sqlite3_bind_int64(s, 2, static_cast<sqlite3_int64>(config_.max_jobs));
        rc = sqlite3_step(s);
        sqlite3_reset(s);
    }
    if (rc != SQLITE_DONE && rc != SQLITE_OK) return handle_error(rc, "pruning");
    prune_bodies();
}

std::vector<LedgerRecord> Ledger::query(const LedgerQuery& q) {
    flush();
    if (!open()) throw std::runtime_error("the history database " + path_ + " cannot be opened");
    // The bodies table says whether a body was kept and what a replay replayed (ledger.hpp).
    std::string sql = std::string("SELECT ") + kColumns +
                      ", bodies.replay_of, bodies.size, bodies.body IS NOT NULL FROM jobs "
                      "LEFT JOIN bodies USING (job_id) WHERE 1";
    if (q.job_id) sql += " AND job_id = :job AND job_id > 0"; // > 0: the partial index
    if (!q.key_pattern.empty()) sql += " AND routing_key GLOB :key";
    if (!q.result.empty()) sql += " AND result = :result";
    if (q.since_usec) sql += " AND finished_usec >= :since";
    sql += " ORDER BY seq DESC LIMIT :limit";
    Stmt st;
    int rc = sqlite3_prepare_v2(db_, sql.c_str(), -1, &st.s, nullptr);
    if (rc != SQLITE_OK) {
        handle_error(rc, "a query");
        throw std::runtime_error(std::string("history query: ") + sqlite3_errstr(rc));
    }
    auto idx = [&](const char* name) { return sqlite3_bind_parameter_index(st.s, name); };
    if (q.job_id) sqlite3_bind_int64(st.s, idx(":job"), static_cast<sqlite3_int64>(*q.job_id));
    if (!q.key_pattern.empty()) bind_text(st.s, idx(":key"), q.key_pattern);
    if (!q.result.empty()) bind_text(st.s, idx(":result"), q.result);
    if (q.since_usec)
        sqlite3_bind_int64(st.s, idx(":since"), static_cast<sqlite3_int64>(q.since_usec));
    auto limit = q.limit == 0 || q.limit > kMaxQueryLimit ? kMaxQueryLimit : q.limit;
    sqlite3_bind_int64(st.s, idx(":limit"), limit);
    std::vector<LedgerRecord> out;
    while ((rc = sqlite3_step(st.s)) == SQLITE_ROW) {
        LedgerRecord r;
        auto* s = st.s;
        r.job_id = static_cast<JobId>(sqlite3_column_int64(s, 0));
        r.event_id = column_text(s, 1);
        r.looper = column_text(s, 2);
        r.routing_key = column_text(s, 3);
        r.route = column_text(s, 4);
        r.playbook = column_text(s, 5);
        r.playbook_sha256 = column_text(s, 6);
        r.user = column_text(s, 7);
        r.queued_usec = static_cast<std::uint64_t>(sqlite3_column_int64(s, 8));
        r.started_usec = static_cast<std::uint64_t>(sqlite3_column_int64(s, 9));
        r.finished_usec = static_cast<std::uint64_t>(sqlite3_column_int64(s, 10));
        r.result = column_text(s, 11);
        if (sqlite3_column_type(s, 12) != SQLITE_NULL) r.exit_code = sqlite3_column_int(s, 12);
        r.unit = column_text(s, 13);
        r.error = column_text(s, 14);
        r.dedup_key = column_text(s, 15);
        if (sqlite3_column_type(s, 16) != SQLITE_NULL)
            r.replay_of = static_cast<JobId>(sqlite3_column_int64(s, 16));
        if (sqlite3_column_type(s, 17) != SQLITE_NULL)
            r.body_size = static_cast<std::uint64_t>(sqlite3_column_int64(s, 17));
        r.body_stored = sqlite3_column_int(s, 18) != 0;
        out.push_back(std::move(r));
    }
    if (rc != SQLITE_DONE) {
        handle_error(rc, "a query");
        throw std::runtime_error(std::string("history query: ") + sqlite3_errstr(rc));
    }
    return out;
}

DedupLookup Ledger::find_success(const std::string& looper, const std::string& dedup_key,
                                 std::uint64_t since_usec) {
    using S = DedupLookup::Status;
    // The batch in memory first: a job that succeeded a moment ago is not on disk yet.
    for (auto it = pending_.rbegin(); it != pending_.rend(); ++it)
        if (it->result == "succeeded" && it->finished_usec >= since_usec &&
            it->dedup_key == dedup_key && it->looper == looper)
            return {S::found, it->job_id, {}};
    if (!open()) return {S::error, 0, "the database " + path_ + " cannot be opened"};
    Stmt st;
    int rc = sqlite3_prepare_v2(db_,
                                "SELECT job_id FROM jobs WHERE looper = ?1 AND dedup_key = ?2 AND "
                                "dedup_key != '' AND result = 'succeeded' AND finished_usec >= ?3 "
                                "ORDER BY seq DESC LIMIT 1",
                                -1, &st.s, nullptr);
    if (rc == SQLITE_OK) {
        bind_text(st.s, 1, looper);
        bind_text(st.s, 2, dedup_key);
        sqlite3_bind_int64(st.s, 3, static_cast<sqlite3_int64>(since_usec));
        rc = sqlite3_step(st.s);
    }
    if (rc == SQLITE_ROW) return {S::found, static_cast<JobId>(sqlite3_column_int64(st.s, 0)), {}};
    if (rc == SQLITE_DONE) return {S::none, 0, {}};
    std::string why = db_ ? sqlite3_errmsg(db_) : sqlite3_errstr(rc);
    sqlite3_finalize(st.s); // before a rotation closes the database
    st.s = nullptr;
    handle_error(rc, "a de-duplication lookup");
    return {S::error, 0, why};
}

// ---- bodies (history.store_bodies; see ledger.hpp) ---------------------------------------------

bool Ledger::open_bodies() {
    // size: the body's length in bytes (as compact JSON), NULL when none was kept; body: NULL
    // when it was over history.max_body_size.
    if (!exec("CREATE TABLE IF NOT EXISTS bodies (job_id INTEGER PRIMARY KEY, replay_of INTEGER, "
              "size INTEGER, body TEXT)"))
        return false;
    if (config_.store_bodies) return true;
    // Turning store_bodies off is a promise not to keep event data: what earlier runs kept goes
    // now, not at retention's pace. (What replayed what stays.)
    if (!exec("UPDATE bodies SET size = NULL, body = NULL WHERE size IS NOT NULL")) return false;
    if (auto n = sqlite3_changes(db_))
        spdlog::info("history: history.store_bodies is false: removed {} stored event bodies "
                     "from {}",
                     n, path_);
    return true;
}

void Ledger::record_body(JobId job, std::optional<JobId> replay_of, std::string body) {
    if (!config_.store_bodies) return;
    std::uint64_t size = body.size();
    if (size > config_.max_body_size) body.clear();
    if (pending_body_bytes_ + body.size() > kMaxPendingBodyBytes) flush();
    if (pending_body_bytes_ + body.size() > kMaxPendingBodyBytes) {
        // The database has been unwritable for a while: memory stays bounded.
        ++stats_.bodies_dropped;
        return;
    }
    pending_body_bytes_ += body.size();
    pending_bodies_.push_back({job, replay_of, size, std::move(body)});
}

int Ledger::write_bodies(int rc) {
    Stmt st;
    if (rc == SQLITE_OK && !pending_bodies_.empty())
        rc = sqlite3_prepare_v2(db_,
                                "INSERT OR REPLACE INTO bodies (job_id, replay_of, size, body) "
                                "VALUES (?,?,?,?)",
                                -1, &st.s, nullptr);
    for (auto& b : pending_bodies_) {
        if (rc != SQLITE_OK) break;
        auto* s = st.s;
        sqlite3_bind_int64(s, 1, static_cast<sqlite3_int64>(b.job));
        if (b.replay_of)
            sqlite3_bind_int64(s, 2, static_cast<sqlite3_int64>(*b.replay_of));
        else
            sqlite3_bind_null(s, 2);
        sqlite3_bind_int64(s, 3, static_cast<sqlite3_int64>(b.size));
        if (b.size > config_.max_body_size)
            sqlite3_bind_null(s, 4);
        else
            bind_text(s, 4, b.body);
        rc = sqlite3_step(s);
        if (rc == SQLITE_DONE) rc = SQLITE_OK;
        sqlite3_reset(s);
    }
    return rc;
}

void Ledger::clear_pending() {
    pending_.clear();
    pending_bodies_.clear();
    pending_body_bytes_ = 0;
}

void Ledger::arm_timer() {
    int enabled = SD_EVENT_OFF;
    sd_event_source_get_enabled(timer_, &enabled);
    if (enabled != SD_EVENT_OFF) return;
    std::uint64_t now = 0;
    sd_event_now(event_, CLOCK_MONOTONIC, &now);
    sd_event_source_set_time(timer_,
                             now + static_cast<std::uint64_t>(config_.flush_interval.count()));
    sd_event_source_set_enabled(timer_, SD_EVENT_ONESHOT);
}

void Ledger::prune_bodies() {
    // Job ids grow: every body older than the oldest job still recorded has lost its job. (A
    // body whose job was pruned while an older one stays goes when that one goes.) Both lookups
    // use an index (jobs_job, whose `job_id > 0` the subquery repeats; job_id is the bodies' row
    // id).
    exec("DELETE FROM bodies WHERE job_id < COALESCE((SELECT MIN(job_id) FROM jobs WHERE "
         "job_id > 0), 9223372036854775807)");
}

StoredBody Ledger::body(JobId job) {
    using S = StoredBody::Status;
    flush();
    if (!open()) throw std::runtime_error("the history database " + path_ + " cannot be opened");
    Stmt st;
    int rc = sqlite3_prepare_v2(db_,
                                "SELECT routing_key, looper, event_id, result, bodies.size, "
                                "bodies.body FROM jobs LEFT JOIN bodies USING (job_id) "
                                "WHERE job_id = ?1 AND job_id > 0 ORDER BY seq DESC LIMIT 1",
                                -1, &st.s, nullptr);
    if (rc == SQLITE_OK) {
        sqlite3_bind_int64(st.s, 1, static_cast<sqlite3_int64>(job));
        rc = sqlite3_step(st.s);
    }
    StoredBody out;
    if (rc == SQLITE_ROW) {
        auto* s = st.s;
        out.routing_key = column_text(s, 0);
        out.looper = column_text(s, 1);
        out.event_id = column_text(s, 2);
        out.result = column_text(s, 3);
        out.size = static_cast<std::uint64_t>(sqlite3_column_int64(s, 4));
        if (sqlite3_column_type(s, 4) == SQLITE_NULL)
            out.status = S::not_stored;
        else if (sqlite3_column_type(s, 5) == SQLITE_NULL)
            out.status = S::too_large;
        else {
            out.status = S::stored;
            out.body = column_text(s, 5);
        }
        return out;
    }
    if (rc != SQLITE_DONE) {
        handle_error(rc, "a body lookup");
        throw std::runtime_error(std::string("history query: ") + sqlite3_errstr(rc));
    }
    Stmt oldest;
    if (sqlite3_prepare_v2(db_, "SELECT MIN(job_id) FROM jobs WHERE job_id > 0", -1, &oldest.s,
                           nullptr) == SQLITE_OK &&
        sqlite3_step(oldest.s) == SQLITE_ROW && sqlite3_column_type(oldest.s, 0) != SQLITE_NULL &&
        job < static_cast<JobId>(sqlite3_column_int64(oldest.s, 0)))
        out.status = S::pruned;
    return out;
}

JobId Ledger::max_job_id() {
    if (!open()) return 0;
    Stmt st;
    if (sqlite3_prepare_v2(db_, "SELECT MAX(job_id) FROM jobs WHERE job_id > 0", -1, &st.s,
                           nullptr) != SQLITE_OK)
        return 0;
    if (sqlite3_step(st.s) != SQLITE_ROW) return 0;
    return static_cast<JobId>(sqlite3_column_int64(st.s, 0));
}

} // namespace loopabull
