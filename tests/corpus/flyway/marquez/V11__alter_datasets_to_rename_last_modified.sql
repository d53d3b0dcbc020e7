/* SPDX-License-Identifier: Apache-2.0 */

ALTER TABLE datasets RENAME last_modified TO last_modified_at;
