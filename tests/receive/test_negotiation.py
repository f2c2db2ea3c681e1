"""Presentation contexts built from the request, and the access policy's decisions (no network needed)."""

from __future__ import annotations

from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian, JPEG2000Lossless
from pynetdicom.presentation import build_context
from pynetdicom.sop_class import CTImageStorage, PatientRootQueryRetrieveInformationModelFind, Verification

from dicom_ai.config import AccessSettings, KnownNode
from dicom_ai.receive.access import AccessPolicy, Refusal
from dicom_ai.receive.contexts import contexts_for_request


def test_contexts_keep_the_peers_order_and_drop_what_we_do_not_serve() -> None:
    proposed = [build_context(CTImageStorage, [JPEG2000Lossless, "1.2.3.4.5.6", ExplicitVRLittleEndian]),
                build_context(CTImageStorage, [ImplicitVRLittleEndian]),
                build_context(PatientRootQueryRetrieveInformationModelFind, [ImplicitVRLittleEndian]),
                build_context(Verification, [ImplicitVRLittleEndian])]
    supported = {c.abstract_syntax: c.transfer_syntax for c in contexts_for_request(proposed)}
    assert supported == {CTImageStorage: [JPEG2000Lossless, ExplicitVRLittleEndian, ImplicitVRLittleEndian],
                         Verification: [ImplicitVRLittleEndian]}


def test_access_policy_decisions() -> None:
    nodes = {"CT": KnownNode(ae_title="CT", host="127.0.0.1", check_host=True),
             "MR": KnownNode(ae_title="MR", host="localhost", check_host=True)}
    policy = AccessPolicy("DICOM_AI", AccessSettings(mode="allow-list"), nodes)
    assert policy.decide("CT", "DICOM_AI", "127.0.0.1").allowed
    assert policy.decide("CT", "DICOM_AI", "::ffff:127.0.0.1").allowed  # dual-stack view of an IPv4 peer
    assert policy.decide("MR", "DICOM_AI", "127.0.0.1").allowed  # a host name is resolved
    assert policy.decide("CT", "DICOM_AI", "10.0.0.9").refusal is Refusal.CALLING_AE_NOT_RECOGNISED
    assert policy.decide("XR", "DICOM_AI", "127.0.0.1").refusal is Refusal.CALLING_AE_NOT_RECOGNISED
    assert policy.decide("CT", "OTHER", "127.0.0.1").refusal is Refusal.CALLED_AE_NOT_RECOGNISED
    lenient = AccessPolicy("DICOM_AI", AccessSettings(mode="open", check_called_ae=False), {})
    assert lenient.decide("ANYONE", "ANY_TITLE", "192.0.2.1").allowed
