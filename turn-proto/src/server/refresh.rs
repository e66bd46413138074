//! Refresh (RFC 8656 §7.3).
use std::time::{Duration, Instant};

use stun_codec::Message;

use super::FiveTuple;
use super::state::*;
use crate::attributes::{Attribute, Lifetime, RequestedAddressFamily};

impl Server {
    // ---------------------------------------------------------------------------------------
    // Refresh (§7.3), CreatePermission (§9), ChannelBind (§11)
    // ---------------------------------------------------------------------------------------

    pub(super) fn refresh(
        &mut self,
        five_tuple: FiveTuple,
        message: &Message<Attribute>,
        auth: &AuthContext,
        now: Instant,
    ) -> Reply {
        let requested = message.get_attribute::<Lifetime>().map(Lifetime::lifetime);
        let lifetime = self.grant_lifetime(requested);
        let allocation = match owned_allocation(&mut self.allocations, &five_tuple, auth) {
            Ok(allocation) => allocation,
            Err(reply) => return reply,
        };
        if let Some(family) = message.get_attribute::<RequestedAddressFamily>()
            && !allocation
                .relayed
                .iter()
                .any(|r| family_of(r.0.ip()) == family.address_family())
        {
            return Reply::error(443);
        }
        if requested == Some(Duration::ZERO) {
            self.remove_allocation(&five_tuple, false);
            return Reply::Success(vec![lifetime_attr(Duration::ZERO).into()]);
        }
        allocation.expires = now + lifetime;
        arm(
            &mut self.timers,
            &mut allocation.timer_at,
            allocation.expires,
            Timer::Allocation(five_tuple),
        );
        Reply::Success(vec![lifetime_attr(lifetime).into()])
    }
}
