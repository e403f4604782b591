//! Calls to other cores of this node over the mesh, and their answers: a call carries the id
//! its caller waits under in [`Core::answers`] (the node's one waiter registry), and the
//! answer comes back over the answers mesh to be filed under it.
//!
//! [`Core::fan_in`] is the one way to gather what several cores answered: every answer is
//! awaited, even after a failure, so no id is left waiting.

use super::{Call, Core, Done, Token, Work, bump, mesh, unexpected};
use corekv_schema::codec::{ErrorCode, Reply};

impl Core {
    /// Sends `work()` to every other core; the tokens their answers will be filed under.
    pub(super) async fn forward_to_others(&self, work: impl Fn() -> Work) -> Vec<Token> {
        let mut tokens = Vec::with_capacity(usize::from(self.cores) - 1);
        for target in (0..self.cores).filter(|&c| c != self.index) {
            tokens.push(self.forward(target, work()).await);
        }
        tokens
    }

    /// Sends work to `target` and returns the token its answer will be filed under.
    pub(super) async fn forward(&self, target: u16, work: Work) -> Token {
        let token = self.token();
        bump(&self.counters.forwarded_out);
        let call = Call { token: token.id, work };
        let sent = match self.mesh.try_call(target, call) {
            Ok(()) => Ok(()),
            Err(mesh::SendFailed::Full(call)) => {
                bump(&self.counters.backpressure_events);
                self.mesh.call(target, call).await
            }
            Err(closed) => Err(closed),
        };
        if sent.is_err() {
            let reply = Reply::error(ErrorCode::Unavailable, "core is shutting down");
            self.complete(token.id, Done::One(reply));
        }
        token
    }

    /// Files an answer from another core and wakes whoever waits for it.
    pub fn complete(&self, token: u64, done: Done) {
        self.answers.complete(token, done);
    }

    /// A new id to wait for an answer under.
    pub(super) fn token(&self) -> Token {
        Token { id: self.answers.open(), answers: self.answers.clone() }
    }

    /// The answer filed under `token`.
    pub(super) async fn answer(&self, token: Token) -> Done {
        let lost = || Done::One(Reply::error(ErrorCode::Internal, "answer lost"));
        self.answers.answer(token.id).await.unwrap_or_else(lost)
    }

    /// Waits for every token's answer and hands each to `fold`. An error reply, or an answer
    /// `fold` does not take (it gives it back), is a failure; the first one is returned once
    /// every answer has come.
    pub(super) async fn fan_in(
        &self,
        tokens: Vec<Token>,
        mut fold: impl FnMut(Done) -> Option<Done>,
    ) -> Result<(), Reply> {
        let mut failed = None;
        for token in tokens {
            let failure = match self.answer(token).await {
                Done::One(reply @ Reply::Error(_)) => reply,
                done => match fold(done) {
                    None => continue,
                    Some(Done::One(reply)) => reply,
                    Some(other) => unexpected(other),
                },
            };
            failed = failed.or(Some(failure));
        }
        failed.map_or(Ok(()), Err)
    }
}
