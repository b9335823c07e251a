"""The Region Proposal Network: head (``head``), targets and losses (``losses``), proposal
selection (``proposals``) and the module that composes them (``rpn``)."""

from frcnn.modeling.rpn.head import RPNHead
from frcnn.modeling.rpn.losses import rpn_losses, rpn_objectness_loss, rpn_targets
from frcnn.modeling.rpn.proposals import Proposals, select_proposals
from frcnn.modeling.rpn.rpn import Features, RegionProposalNetwork, RPNOutput, feature_levels

__all__ = [
    "Features",
    "Proposals",
    "RPNHead",
    "RPNOutput",
    "RegionProposalNetwork",
    "feature_levels",
    "rpn_losses",
    "rpn_objectness_loss",
    "rpn_targets",
    "select_proposals",
]
